// Reference stubs: exactly the UnityEngine API surface the VemViz scripts use, with trivial
// bodies, so that `mcs` can type-check the scripts without Unity. Signatures follow the Unity
// 2022.3 / Unity 6 scripting reference. Vector3 is real enough to run ObjParser under mono.
using System;
using System.Collections.Generic;

namespace UnityEngine.Rendering
{
    public enum IndexFormat { UInt16 = 0, UInt32 = 1 }
}

namespace UnityEngine
{
    public class Object
    {
        public string name { get; set; }
        public static void DestroyImmediate(Object obj) { }
    }

    public class Component : Object
    {
        public Transform transform { get { return null; } }
        public GameObject gameObject { get { return null; } }
        public T GetComponent<T>() { return default(T); }
        public T GetComponentInChildren<T>() { return default(T); }
        public T[] GetComponentsInChildren<T>(bool includeInactive) { return null; }
    }

    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour { }

    public sealed class GameObject : Object
    {
        public GameObject(string name) { }
        public Transform transform { get { return null; } }
        public bool activeSelf { get { return true; } }
        public void SetActive(bool value) { }
        public T AddComponent<T>() where T : Component { return null; }
        public T GetComponent<T>() { return default(T); }
    }

    public class Transform : Component
    {
        public Vector3 position { get; set; }
        public Vector3 localPosition { get; set; }
        public Vector3 localScale { get; set; }
        public Quaternion rotation { get; set; }
        public Vector3 right { get { return default(Vector3); } }
        public Vector3 up { get { return default(Vector3); } }
        public Matrix4x4 worldToLocalMatrix { get { return default(Matrix4x4); } }
        public void SetParent(Transform parent, bool worldPositionStays) { }
    }

    public struct Vector2
    {
        public float x, y;
        public Vector2(float x, float y) { this.x = x; this.y = y; }
        public static float Distance(Vector2 a, Vector2 b) { return 0f; }
        public static Vector2 operator +(Vector2 a, Vector2 b) { return new Vector2(a.x + b.x, a.y + b.y); }
        public static Vector2 operator -(Vector2 a, Vector2 b) { return new Vector2(a.x - b.x, a.y - b.y); }
        public static Vector2 operator *(float d, Vector2 a) { return new Vector2(a.x * d, a.y * d); }
        public static implicit operator Vector2(Vector3 v) { return new Vector2(v.x, v.y); }
        public static implicit operator Vector3(Vector2 v) { return new Vector3(v.x, v.y, 0f); }
    }

    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
        public static Vector3 zero { get { return new Vector3(0f, 0f, 0f); } }
        public static Vector3 one { get { return new Vector3(1f, 1f, 1f); } }
        public static Vector3 up { get { return new Vector3(0f, 1f, 0f); } }
        public static Vector3 forward { get { return new Vector3(0f, 0f, 1f); } }
        public float magnitude { get { return (float)Math.Sqrt(x * x + y * y + z * z); } }
        public static float Dot(Vector3 a, Vector3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
        public static Vector3 operator +(Vector3 a, Vector3 b) { return new Vector3(a.x + b.x, a.y + b.y, a.z + b.z); }
        public static Vector3 operator -(Vector3 a, Vector3 b) { return new Vector3(a.x - b.x, a.y - b.y, a.z - b.z); }
        public static Vector3 operator -(Vector3 a) { return new Vector3(-a.x, -a.y, -a.z); }
        public static Vector3 operator *(Vector3 a, float d) { return new Vector3(a.x * d, a.y * d, a.z * d); }
        public static Vector3 operator *(float d, Vector3 a) { return a * d; }
    }

    public struct Vector4
    {
        public Vector4(float x, float y, float z, float w) { }
    }

    public struct Quaternion
    {
        public static Quaternion Euler(float x, float y, float z) { return default(Quaternion); }
        public static Quaternion FromToRotation(Vector3 fromDirection, Vector3 toDirection) { return default(Quaternion); }
        public static Vector3 operator *(Quaternion rotation, Vector3 point) { return point; }
    }

    public struct Matrix4x4
    {
        public static Matrix4x4 identity { get { return default(Matrix4x4); } }
        public void SetRow(int index, Vector4 row) { }
        public static Matrix4x4 operator *(Matrix4x4 lhs, Matrix4x4 rhs) { return lhs; }
    }

    public struct Bounds
    {
        public Bounds(Vector3 center, Vector3 size) { }
        public Vector3 center { get { return default(Vector3); } }
        public Vector3 extents { get { return default(Vector3); } }
        public void Encapsulate(Bounds bounds) { }
    }

    public struct Rect
    {
        public Rect(float x, float y, float width, float height) { }
        public bool Contains(Vector2 point) { return false; }
    }

    public struct Color
    {
        public float r, g, b, a;
        public Color(float r, float g, float b, float a) { this.r = r; this.g = g; this.b = b; this.a = a; }
        public static Color white { get { return new Color(1f, 1f, 1f, 1f); } }
        public static Color gray { get { return new Color(0.5f, 0.5f, 0.5f, 1f); } }
    }

    public static class ColorUtility
    {
        public static bool TryParseHtmlString(string htmlString, out Color color) { color = default(Color); return false; }
    }

    public struct Mathf
    {
        public const float Deg2Rad = 0.017453292f;
        public static float Clamp(float value, float min, float max) { return value; }
        public static float Clamp01(float value) { return value; }
        public static float Max(float a, float b) { return a; }
        public static int Max(int a, int b) { return a; }
        public static float Sin(float f) { return f; }
        public static float Cos(float f) { return f; }
        public static float Tan(float f) { return f; }
        public static float Pow(float f, float p) { return f; }
    }

    public class Mesh : Object
    {
        public Rendering.IndexFormat indexFormat { get; set; }
        public Vector3[] vertices { get; set; }
        public int[] triangles { get; set; }
        public void SetVertices(List<Vector3> inVertices) { }
        public void SetNormals(List<Vector3> inNormals) { }
        public void SetTriangles(List<int> triangles, int submesh) { }
        public void RecalculateNormals() { }
        public void RecalculateBounds() { }
    }

    public class Shader : Object
    {
        public static Shader Find(string name) { return null; }
        public static void SetGlobalFloat(string name, float value) { }
        public static void SetGlobalVector(string name, Vector4 value) { }
        public static void SetGlobalTexture(string name, Texture value) { }
        public static void SetGlobalMatrix(string name, Matrix4x4 value) { }
    }

    public class Material : Object
    {
        public Material(Shader shader) { }
        public Color color { get; set; }
    }

    public enum TextureFormat { R8 = 63 }
    public enum TextureWrapMode { Repeat = 0, Clamp = 1 }
    public enum FilterMode { Point = 0, Bilinear = 1 }

    public class Texture : Object
    {
        public TextureWrapMode wrapMode { get; set; }
        public FilterMode filterMode { get; set; }
    }

    public sealed class Texture2D : Texture
    {
        public static Texture2D whiteTexture { get { return null; } }
    }

    public sealed class Texture3D : Texture
    {
        public Texture3D(int width, int height, int depth, TextureFormat textureFormat, bool mipChain) { }
        public void SetPixelData<T>(T[] data, int mipLevel, int sourceDataStartIndex = 0) { }
        public void Apply(bool updateMipmaps) { }
    }

    public class TextAsset : Object
    {
        public string text { get { return null; } }
        public byte[] bytes { get { return null; } }
    }

    public class Renderer : Component
    {
        public Bounds bounds { get { return default(Bounds); } }
        public Material sharedMaterial { get; set; }
    }

    public class MeshRenderer : Renderer { }
    public sealed class MeshFilter : Component { public Mesh sharedMesh { get; set; } }

    public sealed class Camera : Behaviour
    {
        public float fieldOfView { get; set; }
        public float nearClipPlane { get; set; }
        public float farClipPlane { get; set; }
    }

    public enum KeyCode { C = 99, F = 102, H = 104, P = 112, R = 114, X = 120, Y = 121, Z = 122,
        PageUp = 280, PageDown = 281, RightShift = 303, LeftShift = 304, RightControl = 305, LeftControl = 306 }

    public enum TouchPhase { Began = 0, Moved = 1, Stationary = 2, Ended = 3, Canceled = 4 }

    public struct Touch
    {
        public Vector2 position { get { return default(Vector2); } }
        public Vector2 deltaPosition { get { return default(Vector2); } }
        public TouchPhase phase { get { return default(TouchPhase); } }
    }

    public class Input
    {
        public static int touchCount { get { return 0; } }
        public static Vector3 mousePosition { get { return default(Vector3); } }
        public static Vector2 mouseScrollDelta { get { return default(Vector2); } }
        public static Touch GetTouch(int index) { return default(Touch); }
        public static bool GetKey(KeyCode key) { return false; }
        public static bool GetKeyDown(KeyCode key) { return false; }
        public static bool GetMouseButton(int button) { return false; }
        public static bool GetMouseButtonDown(int button) { return false; }
    }

    public sealed class Screen { public static int height { get { return 0; } } }
    public class Time { public static float deltaTime { get { return 0f; } } }

    public class Application
    {
        public static string dataPath { get { return null; } }
        public static string streamingAssetsPath { get { return null; } }
        public static string persistentDataPath { get { return null; } }
    }

    public class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
    }

    public static class JsonUtility
    {
        public static T FromJson<T>(string json) { return default(T); }
    }

    public static class ScreenCapture
    {
        public static void CaptureScreenshot(string filename, int superSize) { }
    }

    public sealed class Resources
    {
        public static T[] FindObjectsOfTypeAll<T>() where T : Object { return null; }
    }

    public sealed class GUIStyle { }
    public sealed class GUISkin { public GUIStyle box { get { return null; } } }
    public sealed class GUILayoutOption { }

    public class GUI
    {
        public static GUISkin skin { get { return null; } }
        public static Color color { get; set; }
        public static void DrawTexture(Rect position, Texture image) { }
    }

    public class GUILayout
    {
        public static void BeginArea(Rect screenRect, GUIStyle style) { }
        public static void EndArea() { }
        public static Vector2 BeginScrollView(Vector2 scrollPosition, params GUILayoutOption[] options) { return scrollPosition; }
        public static void EndScrollView() { }
        public static void BeginHorizontal(params GUILayoutOption[] options) { }
        public static void EndHorizontal() { }
        public static void Label(string text, params GUILayoutOption[] options) { }
        public static bool Button(string text, params GUILayoutOption[] options) { return false; }
        public static bool Toggle(bool value, string text, params GUILayoutOption[] options) { return value; }
        public static float HorizontalSlider(float value, float leftValue, float rightValue, params GUILayoutOption[] options) { return value; }
        public static void Space(float pixels) { }
        public static GUILayoutOption Width(float width) { return null; }
    }

    public sealed class GUILayoutUtility
    {
        public static Rect GetRect(float width, float height, params GUILayoutOption[] options) { return default(Rect); }
    }

    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute { public RequireComponent(Type requiredComponent) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class RangeAttribute : Attribute
    {
        public RangeAttribute(float min, float max) { }
    }
}
