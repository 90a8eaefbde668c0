"""Meshing every neuron of the FlyEM 250^3 label volume: seconds, faces, closedness, memory.

Rows: `vemviz.mesh.mesh_labels` with the default worker count and with one process, and the
textbook baseline measured in the same run (per label: marching cubes on the padded bounding
box, VTK windowed-sinc smoothing, VTK quadric decimation to the same budget, GLB per label and
a scene, as vemviz 0.1 did). Each row runs in a fresh forked process, so its peak memory is
its own; ``seconds`` covers reading the TIFF, meshing and writing every file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyvista as pv
import trimesh
from scipy import ndimage as ndi
from skimage.measure import marching_cubes

from benchmarks.common import Result, load_tiff, peak_rss_mib
from vemviz.mesh import MeshOptions, is_closed, mesh_labels

LABELS = Path("flyem_medulla_10nm") / "neuron_labels.tif"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-baseline", action="store_true", help="skip the VTK baseline")
    parser.add_argument("--keep", type=Path, help="keep the vemviz mesh folder here")


def baseline(labels: np.ndarray, voxel: tuple[float, ...], out: Path, options: MeshOptions) -> Any:
    """Marching cubes + VTK smoothing + VTK quadric decimation per label (vemviz 0.1)."""
    out.mkdir()
    scene = trimesh.Scene()
    entries = []
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        mask = np.pad(labels[box] == index + 1, 1)
        verts, faces, _, _ = marching_cubes(mask.astype(np.float32), 0.5, spacing=voxel)
        origin = np.array([(s.start - 1) * v for s, v in zip(box, voxel, strict=True)])
        cells = np.hstack([np.full((len(faces), 1), 3), faces]).ravel()
        poly = pv.PolyData(verts[:, ::-1] + origin[::-1], cells)
        poly = poly.smooth_taubin(n_iter=options.smooth_iterations, pass_band=options.pass_band)
        reduction = max(options.decimate, 1 - options.max_faces / poly.n_cells)
        if poly.n_cells > 64:
            poly = poly.decimate(reduction, volume_preservation=True)
        mesh = trimesh.Trimesh(poly.points / 1000, poly.faces.reshape(-1, 4)[:, 1:])
        mesh.export(out / f"label_{index + 1:05d}.glb", file_type="glb", include_normals=True)
        scene.add_geometry(mesh, node_name=str(index + 1))
        entries.append({"faces": len(mesh.faces), "watertight": is_closed(mesh.faces)})
    scene.export(out / "scene.glb", file_type="glb", include_normals=True)
    return {"objects": entries}


def _case(method: str, workers: int, path: Path, keep: Path | None) -> dict[str, Any]:
    """One row, run in its own process: read, mesh, write; summary and peak memory."""
    start = time.perf_counter()
    cpu_start = time.process_time()
    labels, voxel = load_tiff(path)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=keep.parent if keep else None) as temp:
        out = Path(temp) / "meshes"
        if method == "vemviz":
            options = MeshOptions(workers=workers)
            manifest = mesh_labels(labels, voxel, out, class_name="neuron", options=options)
        else:
            manifest = baseline(labels, voxel, out, MeshOptions())
        seconds = time.perf_counter() - start
        files = sorted(out.glob("*.glb"))
        size_mib = sum(f.stat().st_size for f in files) / 2**20
        if keep is not None and method == "vemviz":
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out, keep)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped by now
    cpu = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
    objects = manifest["objects"]
    return {
        "method": method if method != "vemviz" else f"vemviz, {workers} process(es)",
        "seconds": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "read_s": round(loaded - start, 2),
        "labels": int(np.count_nonzero(np.unique(labels))),
        "meshed": len(objects),
        "faces": int(sum(o["faces"] for o in objects)),
        "max_faces": int(max(o["faces"] for o in objects)),
        "closed": round(float(np.mean([o["watertight"] for o in objects])), 3),
        "glb_mib": round(size_mib, 1),
        "peak_mib": round(peak_rss_mib()),
        "load_avg": round(os.getloadavg()[0], 1),
    }


def run(args: argparse.Namespace) -> Result:
    path = args.data / LABELS
    workers = len(os.sched_getaffinity(0))
    cases = [("vemviz", workers)] + ([("vemviz", 1)] if workers > 1 else [])
    if not args.no_baseline:
        cases.append(("baseline: MC + VTK smoothing + VTK quadric decimation", 1))
    rows = []
    for method, count in cases:
        with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
            rows.append(pool.submit(_case, method, count, path, args.keep).result())
        print(rows[-1], flush=True)
    return Result(
        title=f"Meshing all labels of {LABELS} (250^3, 10 nm), budget 20000 faces per object",
        rows=rows,
        notes=[
            "seconds: read the TIFF + mesh + write one GLB per label, scene.glb and manifest "
            "(wall clock); cpu_s: CPU time of the row's process and its workers",
            "closed: fraction of objects whose surface is closed, edge-manifold and "
            "consistently wound (every directed edge once, its reverse once)",
            "load_avg: 1-minute load average of the shared machine when the row finished",
        ],
    )
