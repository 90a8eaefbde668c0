// Import settings for the OBJ files of exported datasets (Assets/VemViz/Datasets/...): no
// unit conversion (1 unit in the file = 1 Unity unit, in the dataset's units), the file's
// normals, no vertex welding (so vertex counts match manifest.json), no materials (the
// loader assigns VemViz/CrossSection materials) and no animation. Unity's OBJ import
// negates X and reverses the winding, giving Unity-local (X, Y, Z) = volume (-x, z, -y).
using UnityEditor;

namespace VemViz.EditorTools
{
    public class VemVizModelImport : AssetPostprocessor
    {
        void OnPreprocessModel()
        {
            if (!assetPath.Replace('\\', '/').Contains("/VemViz/Datasets/")) return;
            var importer = (ModelImporter)assetImporter;
            importer.globalScale = 1f;
            importer.useFileScale = false;
            importer.importNormals = ModelImporterNormals.Import;
            importer.weldVertices = false;
            importer.materialImportMode = ModelImporterMaterialImportMode.None;
            importer.importAnimation = false;
            importer.importBlendShapes = false;
            importer.meshCompression = ModelImporterMeshCompression.Off;
        }
    }
}
