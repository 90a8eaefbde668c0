// The slicing plane: everything on the side its normal points to is cut away by the
// VemViz/CrossSection shader, and the cut faces are capped in each label's colour.
//
// The plane passes through `center + normal * offset`; normal = (cos pitch sin yaw, sin pitch,
// cos pitch cos yaw) in world space (yaw 0, pitch 0 cuts away +Z, the half facing the default
// camera; pitch 90 cuts away the top, i.e. a section plane of the volume). It is published as
// the global shader properties _VemClipPlane = (normal, -dot(normal, point)) and
// _VemClipEnabled. Mouse: Shift + drag moves the plane along its normal, Ctrl + drag tilts it.
// Keys: PageUp / PageDown move it, X / Y / Z face it along volume x, y, z, C toggles it.
// The legend offers the same controls as sliders for touch screens.
using UnityEngine;

namespace VemViz
{
    public class SlicingPlane : MonoBehaviour
    {
        public bool clipping = true;
        public Vector3 center = Vector3.zero;
        public float offset = 0f;
        [Range(-180f, 180f)] public float yaw = 0f;
        [Range(-90f, 90f)] public float pitch = 0f;
        [Tooltip("Half the range of `offset`; set by Fit.")] public float extent = 1f;
        public bool showPlane = true;
        public Shader planeShader;
        public Color planeColor = new Color(0.55f, 0.8f, 1f, 0.12f);

        GameObject visual;
        Vector3 lastMouse;

        public Vector3 Normal
        {
            get
            {
                float y = yaw * Mathf.Deg2Rad, p = pitch * Mathf.Deg2Rad;
                return new Vector3(Mathf.Cos(p) * Mathf.Sin(y), Mathf.Sin(p), Mathf.Cos(p) * Mathf.Cos(y));
            }
        }

        /// Centre the plane on `bounds`, facing the default camera, through the middle.
        public void Fit(Bounds bounds)
        {
            center = bounds.center;
            extent = Mathf.Max(bounds.extents.magnitude, 1e-6f);
            offset = 0f;
            if (visual != null) visual.transform.localScale = Vector3.one * (2.2f * extent);
        }

        /// Face the plane along a Unity direction given as yaw / pitch angles.
        public void Face(float newYaw, float newPitch)
        {
            yaw = newYaw; pitch = newPitch;
        }

        void Start()
        {
            visual = CreateVisual();
            visual.transform.localScale = Vector3.one * (2.2f * extent);
        }

        GameObject CreateVisual()
        {
            var quad = new GameObject("Plane Visual");
            quad.transform.SetParent(transform, false);
            var mesh = new Mesh();
            mesh.name = "Slicing plane";
            mesh.vertices = new[]
            {
                new Vector3(-0.5f, 0f, -0.5f), new Vector3(-0.5f, 0f, 0.5f),
                new Vector3(0.5f, 0f, 0.5f), new Vector3(0.5f, 0f, -0.5f),
            };
            mesh.triangles = new[] { 0, 1, 2, 0, 2, 3 };
            mesh.RecalculateBounds();
            quad.AddComponent<MeshFilter>().sharedMesh = mesh;
            var material = new Material(planeShader != null ? planeShader : Shader.Find("VemViz/SlicePlane"));
            material.color = planeColor;
            quad.AddComponent<MeshRenderer>().sharedMaterial = material;
            return quad;
        }

        void Update()
        {
            HandleInput();
            Vector3 normal = Normal;
            transform.position = center + normal * offset;
            transform.rotation = Quaternion.FromToRotation(Vector3.up, normal);
            if (visual != null) visual.SetActive(clipping && showPlane);
            Shader.SetGlobalVector("_VemClipPlane", new Vector4(normal.x, normal.y, normal.z, -Vector3.Dot(normal, transform.position)));
            Shader.SetGlobalFloat("_VemClipEnabled", clipping ? 1f : 0f);
        }

        void OnDisable()
        {
            Shader.SetGlobalFloat("_VemClipEnabled", 0f);
        }

        void HandleInput()
        {
            Vector3 mouse = Input.mousePosition;
            Vector3 delta = mouse - lastMouse;
            lastMouse = mouse;
            bool dragging = Input.GetMouseButton(0) && !Input.GetMouseButtonDown(0) && !VemLegend.ContainsScreenPoint(mouse);
            bool shift = Input.GetKey(KeyCode.LeftShift) || Input.GetKey(KeyCode.RightShift);
            bool ctrl = Input.GetKey(KeyCode.LeftControl) || Input.GetKey(KeyCode.RightControl);
            float step = extent / Mathf.Max(Screen.height, 1) * 2f;
            if (dragging && shift) offset += delta.y * step;
            if (dragging && ctrl) Face(yaw + delta.x * 0.3f, Mathf.Clamp(pitch + delta.y * 0.3f, -90f, 90f));
            if (Input.GetKey(KeyCode.PageUp)) offset += extent * Time.deltaTime * 0.5f;
            if (Input.GetKey(KeyCode.PageDown)) offset -= extent * Time.deltaTime * 0.5f;
            if (Input.GetKeyDown(KeyCode.X)) Face(-90f, 0f);  // normal -X = volume +x
            if (Input.GetKeyDown(KeyCode.Y)) Face(180f, 0f);  // normal -Z = volume +y
            if (Input.GetKeyDown(KeyCode.Z)) Face(0f, 90f);   // normal +Y = volume +z
            if (Input.GetKeyDown(KeyCode.C)) clipping = !clipping;
            offset = Mathf.Clamp(offset, -extent, extent);
        }
    }
}
