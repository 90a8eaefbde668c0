// The JSON files written by `vemviz export-unity`, as classes for Unity's JsonUtility.
// dataset.json describes the labels; volume.json the optional downsampled intensity volume.
// Unity-local axes of a dataset: (X, Y, Z) = volume (-x, z, -y), in the manifest's units.
using System;

namespace VemViz
{
    [Serializable]
    public class ObjectInfo
    {
        public int label;
        public string name;
        public string className;
        public string color;
        public float opacity = 1f;
        public string obj;
        public string glb;
        public int vertices;
        public int faces;
    }

    [Serializable]
    public class DatasetInfo
    {
        public string format;
        public int formatVersion;
        public string name;
        public string units;
        public float[] boundsCenter;
        public float[] boundsSize;
        public string volume;
        public ObjectInfo[] objects;
    }

    [Serializable]
    public class VolumeInfo
    {
        public string format;
        public string data;
        public int[] shapeZYX;
        public float[] localToUvw;
        public float[] intensityRange;
    }
}
