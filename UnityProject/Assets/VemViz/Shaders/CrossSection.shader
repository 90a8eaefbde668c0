// VemViz/CrossSection (built-in render pipeline): a lit model surface clipped against the
// slicing plane, with the cut faces capped in the label colour.
//
// Clipping: SlicingPlane publishes _VemClipPlane = (n, d) in world space; fragments with
// dot(n, p) + d > 0 are discarded (also in the shadow pass, via `addshadow`).
// Caps: a second pass draws the mesh's back faces (Cull Front) unlit in the label colour.
// Where the cut removed the front faces, the inside of the closed mesh, i.e. its back faces,
// becomes visible exactly over the cut region, so the model looks solid. The cap's colour is
// taken at the point where the view ray meets the plane; with an intensity volume
// (_VemVolumeEnabled) it is blended with the volume sampled there (_VemVolumeMix), which
// textures the cut face with the EM data. Caps keep the depth of the back faces, so objects
// nested inside a cut object stay visible through its cap.
// Opacity below 1 is rendered by screen-door dithering, which keeps depth and caps correct
// without sorting.
// URP / HDRP: surface shaders are built-in only; recreate this with a Shader Graph that
// clips on the same plane (Alpha Clip) plus a second, unlit, front-culled material for caps.
Shader "VemViz/CrossSection"
{
    Properties
    {
        _Color ("Colour", Color) = (1, 1, 1, 1)
        _Glossiness ("Smoothness", Range(0, 1)) = 0.35
        _Metallic ("Metallic", Range(0, 1)) = 0
    }
    SubShader
    {
        Tags { "RenderType" = "Opaque" "Queue" = "Geometry" }

        CGINCLUDE
        float4 _VemClipPlane;
        float _VemClipEnabled;
        fixed4 _Color;

        // Signed distance to the slicing plane; positive is cut away. -1 when slicing is off.
        float VemClipDistance(float3 worldPos)
        {
            return _VemClipEnabled > 0.5 ? dot(_VemClipPlane.xyz, worldPos) + _VemClipPlane.w : -1.0;
        }

        // Discards a fraction (1 - alpha) of the pixels in a 4 x 4 ordered-dither pattern.
        void VemDither(float2 pixel, float alpha)
        {
            const float4x4 bayer = float4x4(0, 8, 2, 10, 12, 4, 14, 6, 3, 11, 1, 9, 15, 7, 13, 5);
            int2 p = (int2)fmod(floor(pixel), 4.0);
            clip(alpha - (bayer[p.y][p.x] + 0.5) / 16.0);
        }
        ENDCG

        CGPROGRAM
        #pragma surface surf Standard fullforwardshadows addshadow
        #pragma target 3.0

        half _Glossiness;
        half _Metallic;

        struct Input
        {
            float3 worldPos;
            float4 screenPos;
        };

        void surf(Input IN, inout SurfaceOutputStandard o)
        {
            clip(-VemClipDistance(IN.worldPos));
            VemDither(IN.screenPos.xy / max(IN.screenPos.w, 1e-6) * _ScreenParams.xy, _Color.a);
            o.Albedo = _Color.rgb;
            o.Metallic = _Metallic;
            o.Smoothness = _Glossiness;
            o.Alpha = 1;
        }
        ENDCG

        Pass
        {
            Name "CAP"
            Tags { "LightMode" = "Always" }
            Cull Front

            CGPROGRAM
            #pragma vertex vert
            #pragma fragment frag
            #pragma target 3.0
            #include "UnityCG.cginc"

            sampler3D _VemVolumeTex;
            float4x4 _VemWorldToUvw;
            float _VemVolumeEnabled;
            float _VemVolumeMix;

            struct v2f
            {
                float4 pos : SV_POSITION;
                float3 worldPos : TEXCOORD0;
            };

            v2f vert(appdata_base v)
            {
                v2f o;
                o.pos = UnityObjectToClipPos(v.vertex);
                o.worldPos = mul(unity_ObjectToWorld, v.vertex).xyz;
                return o;
            }

            fixed4 frag(v2f i) : SV_Target
            {
                if (_VemClipEnabled < 0.5) discard;
                float signedDistance = VemClipDistance(i.worldPos);
                clip(-signedDistance);
                VemDither(i.pos.xy, _Color.a);
                float3 ray = unity_OrthoParams.w > 0.5 ? -UNITY_MATRIX_V[2].xyz
                                                       : normalize(i.worldPos - _WorldSpaceCameraPos);
                float along = dot(_VemClipPlane.xyz, ray);
                float3 onPlane = i.worldPos - ray * (signedDistance / (abs(along) > 1e-5 ? along : 1e-5));
                fixed3 colour = _Color.rgb;
                float3 uvw = mul(_VemWorldToUvw, float4(onPlane, 1)).xyz;
                if (_VemVolumeEnabled > 0.5 && all(uvw >= 0) && all(uvw <= 1))
                {
                    float intensity = tex3D(_VemVolumeTex, uvw).r;
                    colour = lerp(colour, intensity * (0.35 + 0.65 * colour), _VemVolumeMix);
                }
                return fixed4(colour, 1);
            }
            ENDCG
        }
    }
    FallBack "Diffuse"
}
