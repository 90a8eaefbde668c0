// Builds a dataset's GameObject hierarchy from dataset.json, shared by the editor menu
// (meshes from the AssetDatabase) and the runtime loader (meshes parsed from OBJ files):
//
//   <name>            VemDataset; its origin is the centre of the volume
//     Model           offset by -boundsCenter; local axes = Unity-local dataset axes
//       <label name>  MeshFilter + MeshRenderer with a VemViz/CrossSection material
using System;
using UnityEngine;

namespace VemViz
{
    public static class VemDatasetBuilder
    {
        public const string ShaderName = "VemViz/CrossSection";

        public static GameObject Build(DatasetInfo info, Func<ObjectInfo, Mesh> meshFor, Shader shader)
        {
            var root = new GameObject(info.name);
            var dataset = root.AddComponent<VemDataset>();
            dataset.datasetName = info.name;
            dataset.units = info.units;
            var model = new GameObject("Model").transform;
            model.SetParent(root.transform, false);
            model.localPosition = -ToVector(info.boundsCenter);
            dataset.model = model;
            foreach (var obj in info.objects)
            {
                var child = new GameObject(obj.name);
                child.transform.SetParent(model, false);
                child.AddComponent<MeshFilter>().sharedMesh = meshFor(obj);
                var color = ParseColor(obj.color, obj.opacity);
                child.AddComponent<MeshRenderer>().sharedMaterial = CreateMaterial(shader, obj.name, color);
                dataset.labels.Add(new VemLabel
                {
                    label = obj.label, name = obj.name, className = obj.className,
                    color = color, gameObject = child,
                });
            }
            return root;
        }

        public static Material CreateMaterial(Shader shader, string name, Color color)
        {
            var material = new Material(shader);
            material.name = name;
            material.color = color;
            return material;
        }

        public static Color ParseColor(string hex, float opacity)
        {
            Color color;
            if (!ColorUtility.TryParseHtmlString(hex, out color)) color = Color.gray;
            color.a = Mathf.Clamp01(opacity);
            return color;
        }

        public static Vector3 ToVector(float[] values)
        {
            return values != null && values.Length == 3 ? new Vector3(values[0], values[1], values[2]) : Vector3.zero;
        }

        /// The R8 volume texture described by volume.json, filled from volume.bytes.
        public static Texture3D CreateVolumeTexture(VolumeInfo info, byte[] voxels)
        {
            int depth = info.shapeZYX[0], height = info.shapeZYX[1], width = info.shapeZYX[2];
            if (voxels.Length != width * height * depth)
                throw new ArgumentException("volume.bytes does not match the shape in volume.json");
            var texture = new Texture3D(width, height, depth, TextureFormat.R8, false);
            texture.name = "Intensity volume";
            texture.wrapMode = TextureWrapMode.Clamp;
            texture.filterMode = FilterMode.Bilinear;
            texture.SetPixelData(voxels, 0);
            texture.Apply(false);
            return texture;
        }

        public static Matrix4x4 LocalToUvw(VolumeInfo info)
        {
            float[] v = info.localToUvw;
            var m = new Matrix4x4();
            for (int row = 0; row < 4; row++)
                m.SetRow(row, new Vector4(v[4 * row], v[4 * row + 1], v[4 * row + 2], v[4 * row + 3]));
            return m;
        }

        /// Attaches an intensity volume to a built dataset.
        public static void SetVolume(GameObject root, VolumeInfo info, Texture3D texture)
        {
            var dataset = root.GetComponent<VemDataset>();
            dataset.volumeTexture = texture;
            dataset.localToUvw = LocalToUvw(info);
        }
    }
}
