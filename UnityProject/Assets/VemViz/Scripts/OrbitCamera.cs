// Orbit / zoom / pan camera for mouse and touch.
//
// Mouse: left drag orbits, right or middle drag pans, the wheel zooms. Touch: one finger
// orbits, two fingers pinch to zoom and move together to pan. Keys: R resets the view, F
// frames the visible dataset. Mouse drags with Shift or Ctrl held belong to the slicing plane,
// and input over the legend panel belongs to the legend. The camera looks at `pivot` from
// `distance` at the angles `yaw` and `pitch`; the default yaw of 180 looks along -Z, which
// shows volume x to the right and the section axis z up (Unity-local = volume (-x, z, -y)).
using UnityEngine;

namespace VemViz
{
    [RequireComponent(typeof(Camera))]
    public class OrbitCamera : MonoBehaviour
    {
        public Vector3 pivot = Vector3.zero;
        public float distance = 3f;
        public float yaw = 180f;
        public float pitch = 15f;
        [Tooltip("Degrees per pixel of drag.")] public float orbitSpeed = 0.3f;
        [Tooltip("Fraction of the distance per wheel step or pinch.")] public float zoomSpeed = 0.1f;
        public float minDistance = 0.001f;
        public float maxDistance = 1e6f;

        Vector3 homePivot;
        float homeDistance, homeYaw, homePitch;
        Vector3 lastMouse;
        Camera cam;

        void Awake()
        {
            cam = GetComponent<Camera>();
            SaveHome();
        }

        void SaveHome()
        {
            homePivot = pivot; homeDistance = distance; homeYaw = yaw; homePitch = pitch;
        }

        /// Centre the view on `bounds` and make that the view R returns to.
        public void Frame(Bounds bounds)
        {
            pivot = bounds.center;
            float radius = Mathf.Max(bounds.extents.magnitude, 1e-6f);
            distance = radius / Mathf.Sin(0.5f * cam.fieldOfView * Mathf.Deg2Rad) * 1.1f;
            yaw = 180f; pitch = 15f;
            SaveHome();
        }

        public void ResetView()
        {
            pivot = homePivot; distance = homeDistance; yaw = homeYaw; pitch = homePitch;
        }

        void Update()
        {
            if (Input.touchCount > 0) HandleTouch();
            else HandleMouse();
            if (Input.GetKeyDown(KeyCode.R)) ResetView();
            if (Input.GetKeyDown(KeyCode.F) && VemDataset.Active != null) Frame(VemDataset.Active.WorldBounds());
            Apply();
        }

        static bool PlaneModifierHeld()
        {
            return Input.GetKey(KeyCode.LeftShift) || Input.GetKey(KeyCode.RightShift)
                || Input.GetKey(KeyCode.LeftControl) || Input.GetKey(KeyCode.RightControl);
        }

        void HandleMouse()
        {
            Vector3 mouse = Input.mousePosition;
            Vector3 delta = mouse - lastMouse;
            lastMouse = mouse;
            if (VemLegend.ContainsScreenPoint(mouse)) return;
            bool anyDown = Input.GetMouseButtonDown(0) || Input.GetMouseButtonDown(1) || Input.GetMouseButtonDown(2);
            if (anyDown) return;  // no jump on the first frame of a drag
            if (Input.GetMouseButton(0) && !PlaneModifierHeld()) Orbit(delta);
            else if (Input.GetMouseButton(1) || Input.GetMouseButton(2)) Pan(delta);
            float wheel = Input.mouseScrollDelta.y;
            if (wheel != 0f) Zoom(Mathf.Pow(1f - zoomSpeed, wheel));
        }

        void HandleTouch()
        {
            if (Input.touchCount == 1)
            {
                Touch touch = Input.GetTouch(0);
                if (touch.phase == TouchPhase.Moved && !VemLegend.ContainsScreenPoint(touch.position))
                    Orbit(touch.deltaPosition);
                return;
            }
            Touch a = Input.GetTouch(0), b = Input.GetTouch(1);
            if (VemLegend.ContainsScreenPoint(a.position) || VemLegend.ContainsScreenPoint(b.position)) return;
            Vector2 previousA = a.position - a.deltaPosition, previousB = b.position - b.deltaPosition;
            float before = Vector2.Distance(previousA, previousB), now = Vector2.Distance(a.position, b.position);
            if (before > 1f && now > 1f) Zoom(before / now);
            Pan(0.5f * (a.deltaPosition + b.deltaPosition));
        }

        void Orbit(Vector2 delta)
        {
            yaw += delta.x * orbitSpeed;
            pitch = Mathf.Clamp(pitch - delta.y * orbitSpeed, -89f, 89f);
        }

        void Pan(Vector2 delta)
        {
            float unitsPerPixel = 2f * distance * Mathf.Tan(0.5f * cam.fieldOfView * Mathf.Deg2Rad) / Mathf.Max(Screen.height, 1);
            pivot -= (transform.right * delta.x + transform.up * delta.y) * unitsPerPixel;
        }

        void Zoom(float factor)
        {
            distance = Mathf.Clamp(distance * factor, minDistance, maxDistance);
        }

        void Apply()
        {
            Quaternion rotation = Quaternion.Euler(pitch, yaw, 0f);
            transform.rotation = rotation;
            transform.position = pivot - rotation * Vector3.forward * distance;
            cam.nearClipPlane = distance * 0.01f;
            cam.farClipPlane = distance * 100f;
        }
    }
}
