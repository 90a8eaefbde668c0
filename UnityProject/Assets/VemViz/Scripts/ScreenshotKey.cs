// Saves a PNG of the game view when `key` is pressed (or the legend's Screenshot button is
// clicked), at `superSize` times the screen resolution. Files go to <project>/Screenshots in
// the editor and to Application.persistentDataPath in players.
using System;
using System.IO;
using UnityEngine;

namespace VemViz
{
    public class ScreenshotKey : MonoBehaviour
    {
        public KeyCode key = KeyCode.P;
        [Range(1, 8)] public int superSize = 2;

        void Update()
        {
            if (Input.GetKeyDown(key)) Capture();
        }

        public string Capture()
        {
#if UNITY_EDITOR
            string folder = Path.Combine(Path.GetDirectoryName(Application.dataPath), "Screenshots");
#else
            string folder = Application.persistentDataPath;
#endif
            Directory.CreateDirectory(folder);
            string path = Path.Combine(folder, "vemviz-" + DateTime.Now.ToString("yyyyMMdd-HHmmss-fff") + ".png");
            ScreenCapture.CaptureScreenshot(path, superSize);
            Debug.Log("VemViz: screenshot saved to " + path);
            return path;
        }
    }
}
