// A small Wavefront OBJ reader for runtime loading (the editor uses Unity's own importer).
//
// It reads `v`, `vn` and `f` records (f with v, v/vt, v//vn or v/vt/vn corners, polygons
// fan-triangulated, negative indices allowed) and ignores everything else. Each distinct
// (position, normal) pair becomes one vertex, so files whose v and vn indices agree, as
// vemviz writes them, keep their vertex count.
//
// Handedness: OBJ is right-handed with counter-clockwise front faces. Exactly like Unity's
// OBJ importer, positions and normals get X negated and every triangle's winding is
// reversed, so a model loaded here matches the same OBJ imported in the editor: a rotation
// of the original, not its mirror image, with faces still pointing outwards.
using System;
using System.Collections.Generic;
using System.Globalization;
using UnityEngine;
using UnityEngine.Rendering;

namespace VemViz
{
    public class ObjData
    {
        public readonly List<Vector3> positions = new List<Vector3>();
        public readonly List<Vector3> normals = new List<Vector3>();
        public readonly List<int> triangles = new List<int>();
    }

    public static class ObjParser
    {
        static readonly char[] Space = { ' ', '\t' };

        public static ObjData Parse(string text)
        {
            var filePositions = new List<Vector3>();
            var fileNormals = new List<Vector3>();
            var corners = new Dictionary<long, int>();
            var data = new ObjData();
            var polygon = new List<int>();
            foreach (string rawLine in text.Split('\n'))
            {
                string[] parts = rawLine.Trim().Split(Space, StringSplitOptions.RemoveEmptyEntries);
                if (parts.Length == 0) continue;
                if (parts[0] == "v") filePositions.Add(ReadVector(parts));
                else if (parts[0] == "vn") fileNormals.Add(ReadVector(parts));
                else if (parts[0] == "f")
                {
                    polygon.Clear();
                    for (int i = 1; i < parts.Length; i++)
                        polygon.Add(Corner(parts[i], filePositions, fileNormals, corners, data));
                    for (int i = 2; i < polygon.Count; i++)
                    {
                        // (0, i-1, i) in the file becomes (0, i, i-1): reversed winding.
                        data.triangles.Add(polygon[0]);
                        data.triangles.Add(polygon[i]);
                        data.triangles.Add(polygon[i - 1]);
                    }
                }
            }
            if (data.normals.Count != data.positions.Count) data.normals.Clear();
            return data;
        }

        static Vector3 ReadVector(string[] parts)
        {
            // X is negated: right-handed file -> Unity's left-handed space.
            return new Vector3(-ParseFloat(parts[1]), ParseFloat(parts[2]), ParseFloat(parts[3]));
        }

        static float ParseFloat(string s)
        {
            return float.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture);
        }

        static int ResolveIndex(string s, int count)
        {
            int index = int.Parse(s, CultureInfo.InvariantCulture);
            return index < 0 ? count + index : index - 1;
        }

        static int Corner(string token, List<Vector3> filePositions, List<Vector3> fileNormals,
                          Dictionary<long, int> corners, ObjData data)
        {
            string[] refs = token.Split('/');
            int p = ResolveIndex(refs[0], filePositions.Count);
            int n = refs.Length > 2 && refs[2].Length > 0 ? ResolveIndex(refs[2], fileNormals.Count) : -1;
            long key = (long)p * 0x100000000L + (n + 1);
            int vertex;
            if (corners.TryGetValue(key, out vertex)) return vertex;
            vertex = data.positions.Count;
            corners[key] = vertex;
            data.positions.Add(filePositions[p]);
            if (n >= 0) data.normals.Add(fileNormals[n]);
            return vertex;
        }

        public static Mesh ToMesh(ObjData data, string name)
        {
            var mesh = new Mesh();
            mesh.name = name;
            if (data.positions.Count > 65535) mesh.indexFormat = IndexFormat.UInt32;
            mesh.SetVertices(data.positions);
            if (data.normals.Count == data.positions.Count) mesh.SetNormals(data.normals);
            mesh.SetTriangles(data.triangles, 0);
            if (data.normals.Count != data.positions.Count) mesh.RecalculateNormals();
            mesh.RecalculateBounds();
            return mesh;
        }
    }
}
