// The legend and control panel (IMGUI): label names with their colours and visibility
// toggles, slicing-plane controls (also the touch-friendly way to move the plane), the
// volume texture mix for cut faces, reset view and screenshot buttons. H hides the panel.
using UnityEngine;

namespace VemViz
{
    public class VemLegend : MonoBehaviour
    {
        public bool visible = true;
        public float width = 280f;
        public OrbitCamera orbitCamera;
        public SlicingPlane slicingPlane;
        public ScreenshotKey screenshot;

        static Rect panelRect;
        static bool panelShown;
        Vector2 scroll;

        /// Whether a screen point (pixels, origin bottom-left) lies over the panel.
        public static bool ContainsScreenPoint(Vector2 point)
        {
            return panelShown && panelRect.Contains(new Vector2(point.x, Screen.height - point.y));
        }

        void Update()
        {
            if (Input.GetKeyDown(KeyCode.H)) visible = !visible;
        }

        void OnDisable()
        {
            panelShown = false;
        }

        void OnGUI()
        {
            panelShown = visible;
            if (!visible) return;
            panelRect = new Rect(10f, 10f, width, Screen.height - 20f);
            GUILayout.BeginArea(panelRect, GUI.skin.box);
            scroll = GUILayout.BeginScrollView(scroll);
            DrawLabels(VemDataset.Active);
            DrawSliceControls();
            DrawViewControls(VemDataset.Active);
            GUILayout.Label("Drag: orbit   Right/middle drag: pan   Wheel/pinch: zoom\n"
                + "Shift-drag: move slice   Ctrl-drag: tilt slice   C: slice on/off\n"
                + "R: reset view   F: frame   H: hide panel   P: screenshot");
            GUILayout.EndScrollView();
            GUILayout.EndArea();
        }

        static void DrawLabels(VemDataset dataset)
        {
            if (dataset == null)
            {
                GUILayout.Label("No dataset loaded (VemViz > Load Dataset).");
                return;
            }
            GUILayout.Label(dataset.datasetName + " (" + dataset.units + ")");
            GUILayout.BeginHorizontal();
            if (GUILayout.Button("All")) SetAll(dataset, true);
            if (GUILayout.Button("None")) SetAll(dataset, false);
            GUILayout.EndHorizontal();
            foreach (var entry in dataset.labels)
            {
                GUILayout.BeginHorizontal();
                Rect swatch = GUILayoutUtility.GetRect(16f, 16f, GUILayout.Width(16f));
                Color previous = GUI.color;
                GUI.color = entry.color;
                GUI.DrawTexture(swatch, Texture2D.whiteTexture);
                GUI.color = previous;
                entry.Visible = GUILayout.Toggle(entry.Visible, entry.label + "  " + entry.name);
                GUILayout.EndHorizontal();
            }
            if (dataset.volumeTexture != null)
            {
                GUILayout.Label("Volume on cut faces");
                dataset.volumeMix = GUILayout.HorizontalSlider(dataset.volumeMix, 0f, 1f);
            }
        }

        static void SetAll(VemDataset dataset, bool value)
        {
            foreach (var entry in dataset.labels) entry.Visible = value;
        }

        void DrawSliceControls()
        {
            if (slicingPlane == null) return;
            GUILayout.Space(8f);
            slicingPlane.clipping = GUILayout.Toggle(slicingPlane.clipping, "Slice");
            if (!slicingPlane.clipping) return;
            GUILayout.Label("Offset");
            slicingPlane.offset = GUILayout.HorizontalSlider(slicingPlane.offset, -slicingPlane.extent, slicingPlane.extent);
            GUILayout.Label("Yaw");
            slicingPlane.yaw = GUILayout.HorizontalSlider(slicingPlane.yaw, -180f, 180f);
            GUILayout.Label("Pitch");
            slicingPlane.pitch = GUILayout.HorizontalSlider(slicingPlane.pitch, -90f, 90f);
            GUILayout.BeginHorizontal();
            if (GUILayout.Button("x")) slicingPlane.Face(-90f, 0f);
            if (GUILayout.Button("y")) slicingPlane.Face(180f, 0f);
            if (GUILayout.Button("z (section)")) slicingPlane.Face(0f, 90f);
            GUILayout.EndHorizontal();
            slicingPlane.showPlane = GUILayout.Toggle(slicingPlane.showPlane, "Show plane");
        }

        void DrawViewControls(VemDataset dataset)
        {
            GUILayout.Space(8f);
            GUILayout.BeginHorizontal();
            if (orbitCamera != null && GUILayout.Button("Reset view")) orbitCamera.ResetView();
            if (orbitCamera != null && dataset != null && GUILayout.Button("Frame")) orbitCamera.Frame(dataset.WorldBounds());
            if (screenshot != null && GUILayout.Button("Screenshot")) screenshot.Capture();
            GUILayout.EndHorizontal();
        }
    }
}
