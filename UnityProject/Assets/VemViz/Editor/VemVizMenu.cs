// Editor menu "VemViz":
//   Load Dataset        builds a prefab from an exported dataset folder (meshes are the OBJ
//                       files as imported by Unity, see VemVizModelImport) and places it under
//                       the scene's VemDatasetLoader, replacing an earlier copy.
//   Copy Dataset To StreamingAssets
//                       copies the selected dataset for runtime loading in players.
// Generated assets (materials, the intensity Texture3D, the prefab) go to
// Assets/VemViz/Generated/<name>/, outside the dataset folder, which re-export replaces.
using System.IO;
using UnityEditor;
using UnityEngine;

namespace VemViz.EditorTools
{
    public static class VemVizMenu
    {
        const string DatasetsFolder = "Assets/VemViz/Datasets";
        const string GeneratedFolder = "Assets/VemViz/Generated";
        const string StreamingFolder = "Assets/StreamingAssets/VemViz/Datasets";

        [MenuItem("VemViz/Load Dataset")]
        public static void LoadDataset()
        {
            string folder = SelectedDatasetFolder() ?? AskForDatasetFolder();
            if (folder == null) return;
            GameObject prefab = BuildPrefab(folder);
            PlaceInScene(prefab);
        }

        [MenuItem("VemViz/Copy Dataset To StreamingAssets")]
        public static void CopyToStreamingAssets()
        {
            string folder = SelectedDatasetFolder() ?? AskForDatasetFolder();
            if (folder == null) return;
            EnsureFolder(StreamingFolder);
            string target = StreamingFolder + "/" + Path.GetFileName(folder);
            AssetDatabase.DeleteAsset(target);
            if (!AssetDatabase.CopyAsset(folder, target))
                EditorUtility.DisplayDialog("VemViz", "Could not copy " + folder + " to " + target, "OK");
        }

        static bool IsDatasetFolder(string assetFolder)
        {
            return AssetDatabase.IsValidFolder(assetFolder) && File.Exists(assetFolder + "/dataset.json");
        }

        static string SelectedDatasetFolder()
        {
            string path = Selection.activeObject != null ? AssetDatabase.GetAssetPath(Selection.activeObject) : "";
            return IsDatasetFolder(path) ? path : null;
        }

        static string AskForDatasetFolder()
        {
            string start = Path.GetFullPath(DatasetsFolder);
            string chosen = EditorUtility.OpenFolderPanel("Load VemViz dataset", start, "");
            if (string.IsNullOrEmpty(chosen)) return null;
            string projectRoot = Path.GetFullPath(".").Replace('\\', '/').TrimEnd('/') + "/";
            string full = Path.GetFullPath(chosen).Replace('\\', '/');
            string assetFolder = full.StartsWith(projectRoot) ? full.Substring(projectRoot.Length) : full;
            if (IsDatasetFolder(assetFolder)) return assetFolder;
            EditorUtility.DisplayDialog("VemViz",
                "Pick a dataset folder inside this project's " + DatasetsFolder + " (one with dataset.json). "
                + "Create it with: vemviz export-unity MESH_DIR --project <this project>", "OK");
            return null;
        }

        static void EnsureFolder(string assetFolder)
        {
            if (AssetDatabase.IsValidFolder(assetFolder)) return;
            string parent = Path.GetDirectoryName(assetFolder).Replace('\\', '/');
            EnsureFolder(parent);
            AssetDatabase.CreateFolder(parent, Path.GetFileName(assetFolder));
        }

        static T LoadAsset<T>(string path) where T : Object
        {
            var asset = AssetDatabase.LoadAssetAtPath<T>(path);
            if (asset == null) throw new FileNotFoundException("VemViz: cannot load " + path);
            return asset;
        }

        static Mesh LoadObjMesh(string path)
        {
            foreach (Object asset in AssetDatabase.LoadAllAssetsAtPath(path))
            {
                var mesh = asset as Mesh;
                if (mesh != null) return mesh;
            }
            throw new FileNotFoundException("VemViz: no mesh imported from " + path);
        }

        public static GameObject BuildPrefab(string folder)
        {
            var info = JsonUtility.FromJson<DatasetInfo>(LoadAsset<TextAsset>(folder + "/dataset.json").text);
            string output = GeneratedFolder + "/" + info.name;
            EnsureFolder(output);
            var shader = Shader.Find(VemDatasetBuilder.ShaderName);
            GameObject root = VemDatasetBuilder.Build(info, obj => LoadObjMesh(folder + "/" + obj.obj), shader);
            try
            {
                foreach (var entry in root.GetComponent<VemDataset>().labels)
                {
                    var material = entry.gameObject.GetComponent<MeshRenderer>().sharedMaterial;
                    SaveAsset(material, output + "/label_" + entry.label.ToString("D5") + ".mat");
                }
                if (!string.IsNullOrEmpty(info.volume))
                {
                    var volume = JsonUtility.FromJson<VolumeInfo>(LoadAsset<TextAsset>(folder + "/" + info.volume).text);
                    byte[] voxels = LoadAsset<TextAsset>(folder + "/" + volume.data).bytes;
                    Texture3D texture = VemDatasetBuilder.CreateVolumeTexture(volume, voxels);
                    SaveAsset(texture, output + "/volume.asset");
                    VemDatasetBuilder.SetVolume(root, volume, texture);
                }
                return PrefabUtility.SaveAsPrefabAsset(root, output + "/" + info.name + ".prefab");
            }
            finally
            {
                Object.DestroyImmediate(root);
            }
        }

        static void SaveAsset(Object asset, string path)
        {
            AssetDatabase.DeleteAsset(path);
            AssetDatabase.CreateAsset(asset, path);
        }

        static void PlaceInScene(GameObject prefab)
        {
            VemDatasetLoader loader = null;
            foreach (var candidate in Resources.FindObjectsOfTypeAll<VemDatasetLoader>())
                if (!EditorUtility.IsPersistent(candidate)) loader = candidate;
            Transform parent = loader != null ? loader.transform : null;
            if (parent != null)
                foreach (var old in parent.GetComponentsInChildren<VemDataset>(true))
                    if (old.datasetName == prefab.name) Undo.DestroyObjectImmediate(old.gameObject);
            var instance = (GameObject)PrefabUtility.InstantiatePrefab(prefab);
            if (parent != null) instance.transform.SetParent(parent, false);
            Undo.RegisterCreatedObjectUndo(instance, "Load VemViz dataset");
            Selection.activeGameObject = instance;
        }
    }
}
