// Puts a dataset into the scene at play time and points the camera and slicing plane at it.
//
// If a dataset is already a child of this object (placed by "VemViz > Load Dataset" in the
// editor), that one is used. Otherwise the dataset folder is read from disk: first
// StreamingAssets/VemViz/Datasets/<name>/ (copy it there with "VemViz > Copy Dataset To
// StreamingAssets" for builds), then, in the editor, Assets/VemViz/Datasets/<name>/. An empty
// name takes the first dataset folder found. Files are read with System.IO, which works on
// desktop players; Android and WebGL keep StreamingAssets inside the package and would need
// UnityWebRequest instead.
using System.IO;
using System.Linq;
using UnityEngine;

namespace VemViz
{
    public class VemDatasetLoader : MonoBehaviour
    {
        [Tooltip("Dataset folder name; empty loads the first dataset found.")]
        public string datasetName = "";
        public bool loadOnStart = true;
        public Shader crossSectionShader;
        public OrbitCamera orbitCamera;
        public SlicingPlane slicingPlane;

        void Start()
        {
            var dataset = GetComponentInChildren<VemDataset>();
            if (dataset == null && loadOnStart)
            {
                string folder = FindDatasetFolder(datasetName);
                if (folder == null)
                {
                    Debug.LogWarning("VemViz: no dataset found. Run `vemviz export-unity`, then VemViz > Load Dataset.");
                    return;
                }
                dataset = LoadFromFolder(folder, crossSectionShader).GetComponent<VemDataset>();
                dataset.transform.SetParent(transform, false);
            }
            if (dataset != null) Focus(dataset);
        }

        public void Focus(VemDataset dataset)
        {
            Bounds bounds = dataset.WorldBounds();
            if (orbitCamera != null) orbitCamera.Frame(bounds);
            if (slicingPlane != null) slicingPlane.Fit(bounds);
        }

        static string[] SearchRoots()
        {
            string streaming = Path.Combine(Application.streamingAssetsPath, "VemViz/Datasets");
#if UNITY_EDITOR
            return new[] { streaming, Path.Combine(Application.dataPath, "VemViz/Datasets") };
#else
            return new[] { streaming };
#endif
        }

        public static string FindDatasetFolder(string name)
        {
            foreach (string root in SearchRoots().Where(Directory.Exists))
            {
                var folders = Directory.GetDirectories(root)
                    .Where(f => !Path.GetFileName(f).StartsWith(".") && File.Exists(Path.Combine(f, "dataset.json")))
                    .OrderBy(f => f, System.StringComparer.Ordinal);
                string match = folders.FirstOrDefault(f => string.IsNullOrEmpty(name) || Path.GetFileName(f) == name);
                if (match != null) return match;
            }
            return null;
        }

        public static GameObject LoadFromFolder(string folder, Shader shader)
        {
            if (shader == null) shader = Shader.Find(VemDatasetBuilder.ShaderName);
            var info = JsonUtility.FromJson<DatasetInfo>(File.ReadAllText(Path.Combine(folder, "dataset.json")));
            GameObject root = VemDatasetBuilder.Build(
                info, obj => ObjParser.ToMesh(ObjParser.Parse(File.ReadAllText(Path.Combine(folder, obj.obj))), obj.name),
                shader);
            if (!string.IsNullOrEmpty(info.volume))
            {
                var volume = JsonUtility.FromJson<VolumeInfo>(File.ReadAllText(Path.Combine(folder, info.volume)));
                byte[] voxels = File.ReadAllBytes(Path.Combine(folder, volume.data));
                VemDatasetBuilder.SetVolume(root, volume, VemDatasetBuilder.CreateVolumeTexture(volume, voxels));
            }
            return root;
        }
    }
}
