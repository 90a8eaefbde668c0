// The root of a loaded dataset: its labels (for the legend and visibility toggles) and its
// optional intensity volume, which it hands to the cross-section shader every frame as
// global properties (_VemVolumeTex, _VemWorldToUvw, _VemVolumeEnabled, _VemVolumeMix).
// The most recently enabled dataset is `Active`; one dataset is shown at a time.
using System;
using System.Collections.Generic;
using UnityEngine;

namespace VemViz
{
    [Serializable]
    public class VemLabel
    {
        public int label;
        public string name;
        public string className;
        public Color color = Color.white;
        public GameObject gameObject;

        public bool Visible
        {
            get { return gameObject != null && gameObject.activeSelf; }
            set { if (gameObject != null) gameObject.SetActive(value); }
        }
    }

    public class VemDataset : MonoBehaviour
    {
        public string datasetName;
        public string units;
        [Tooltip("Parent of the label meshes; its local axes are the dataset's Unity-local axes.")]
        public Transform model;
        public List<VemLabel> labels = new List<VemLabel>();
        public Texture3D volumeTexture;
        [Tooltip("Row-major matrix from model-local coordinates to volume texture (u, v, w).")]
        public Matrix4x4 localToUvw = Matrix4x4.identity;
        [Range(0f, 1f)] public float volumeMix = 0.7f;

        public static VemDataset Active { get; private set; }

        void OnEnable()
        {
            Active = this;
        }

        void OnDisable()
        {
            if (Active == this) Active = null;
            Shader.SetGlobalFloat("_VemVolumeEnabled", 0f);
        }

        void LateUpdate()
        {
            bool hasVolume = volumeTexture != null && model != null;
            Shader.SetGlobalFloat("_VemVolumeEnabled", hasVolume ? 1f : 0f);
            if (!hasVolume) return;
            Shader.SetGlobalTexture("_VemVolumeTex", volumeTexture);
            Shader.SetGlobalMatrix("_VemWorldToUvw", localToUvw * model.worldToLocalMatrix);
            Shader.SetGlobalFloat("_VemVolumeMix", volumeMix);
        }

        /// World-space bounds of the visible label renderers.
        public Bounds WorldBounds()
        {
            var renderers = GetComponentsInChildren<Renderer>(false);
            if (renderers.Length == 0) return new Bounds(transform.position, Vector3.one);
            Bounds bounds = renderers[0].bounds;
            foreach (var r in renderers) bounds.Encapsulate(r.bounds);
            return bounds;
        }
    }
}
