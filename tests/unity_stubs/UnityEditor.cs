// Reference stubs: exactly the UnityEditor API surface the VemViz editor scripts use, with
// trivial bodies (see UnityEngine.cs).
using System;
using UnityEngine;
using Object = UnityEngine.Object;

namespace UnityEditor
{
    [AttributeUsage(AttributeTargets.Method, AllowMultiple = true)]
    public sealed class MenuItem : Attribute { public MenuItem(string itemName) { } }

    public sealed class AssetDatabase
    {
        public static bool IsValidFolder(string path) { return false; }
        public static string CreateFolder(string parentFolder, string newFolderName) { return null; }
        public static T LoadAssetAtPath<T>(string assetPath) where T : Object { return null; }
        public static Object[] LoadAllAssetsAtPath(string assetPath) { return null; }
        public static bool DeleteAsset(string path) { return false; }
        public static bool CopyAsset(string path, string newPath) { return false; }
        public static void CreateAsset(Object asset, string path) { }
        public static string GetAssetPath(Object assetObject) { return null; }
    }

    public sealed class Selection
    {
        public static Object activeObject { get; set; }
        public static GameObject activeGameObject { get; set; }
    }

    public sealed class EditorUtility
    {
        public static string OpenFolderPanel(string title, string folder, string defaultName) { return null; }
        public static bool DisplayDialog(string title, string message, string ok) { return false; }
        public static bool IsPersistent(Object target) { return false; }
    }

    public sealed class PrefabUtility
    {
        public static GameObject SaveAsPrefabAsset(GameObject instanceRoot, string assetPath) { return null; }
        public static Object InstantiatePrefab(Object assetComponentOrGameObject) { return null; }
    }

    public class Undo
    {
        public static void DestroyObjectImmediate(Object objectToUndo) { }
        public static void RegisterCreatedObjectUndo(Object objectToUndo, string name) { }
    }

    public class AssetImporter : Object { }

    public enum ModelImporterNormals { Import = 0, Calculate = 1, None = 2 }
    public enum ModelImporterMaterialImportMode { None = 0, ImportStandard = 1, ImportViaMaterialDescription = 2 }
    public enum ModelImporterMeshCompression { Off = 0, Low = 1, Medium = 2, High = 3 }

    public class ModelImporter : AssetImporter
    {
        public float globalScale { get; set; }
        public bool useFileScale { get; set; }
        public ModelImporterNormals importNormals { get; set; }
        public bool weldVertices { get; set; }
        public ModelImporterMaterialImportMode materialImportMode { get; set; }
        public bool importAnimation { get; set; }
        public bool importBlendShapes { get; set; }
        public ModelImporterMeshCompression meshCompression { get; set; }
    }

    public class AssetPostprocessor
    {
        public string assetPath { get { return null; } }
        public AssetImporter assetImporter { get { return null; } }
    }
}
