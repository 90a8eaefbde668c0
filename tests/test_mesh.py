"""Meshing: closed surfaces, the decimation fallback, coarse blocks, workers, real neurons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import trimesh

from vemviz import VemvizError
from vemviz.mesh import (
    MeshOptions,
    block_mean,
    coarsening,
    decimate_closed,
    exposed_faces,
    is_closed,
    label_surface,
    mesh_labels,
    signed_volume,
)

TETRA = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
TETRA_POINTS = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_is_closed_needs_every_edge_twice_with_consistent_winding():
    assert is_closed(TETRA)
    assert signed_volume(TETRA_POINTS, TETRA) == pytest.approx(1 / 6)  # outward winding
    assert not is_closed(TETRA[:3])  # a hole
    flipped = TETRA.copy()
    flipped[0] = flipped[0, ::-1]
    assert not is_closed(flipped)  # closed but one face wound inwards
    # two tetrahedra sharing an edge: every edge has a partner, but one edge has four faces
    other = TETRA + 4
    points = np.vstack([TETRA_POINTS, TETRA_POINTS * [-1, -1, 1]])
    other[other == 4] = 0
    other[other == 7] = 3
    pinched = np.vstack([TETRA, other[:, ::-1]])
    assert trimesh.Trimesh(points, pinched, process=False).is_watertight is False
    assert not is_closed(pinched)


def test_block_mean_and_coarsening():
    mask = np.zeros((5, 6, 7), bool)
    mask[1:5, 2:6, 0:4] = True
    means = block_mean(mask, 2)
    assert means.shape == (3, 3, 4)
    assert means.sum() * 8 == mask.sum()
    assert block_mean(mask, 1).dtype == np.float32
    cube = np.pad(np.ones((4, 4, 4), bool), 1)
    assert exposed_faces(cube) == 6 * 16
    assert coarsening(1000, 1000) == 1 and coarsening(1001, 1000) == 2
    assert coarsening(9 * 1000, 1000) == 3


def _thin_object() -> np.ndarray:
    """A ball with a one-voxel-thin wire: decimating it hard pinches the wire."""
    zz, yy, xx = np.mgrid[:24, :40, :64]
    mask = (zz - 12) ** 2 + (yy - 20) ** 2 + (xx - 14) ** 2 <= 100
    mask[12, 20, 14:62] = True
    mask[12, 10:30, 60] = True
    return mask


def test_decimation_keeps_the_surface_closed():
    labels = _thin_object().astype(np.uint8)
    box = (slice(0, 24), slice(0, 40), slice(0, 64))
    options = MeshOptions(max_faces=200, decimate=0.9)
    surface = label_surface(labels, box, 1, (10.0, 10.0, 10.0), options)
    assert surface.closed and is_closed(surface.faces)
    assert signed_volume(surface.points, surface.faces) > 0
    full = label_surface(labels, box, 1, (10.0, 10.0, 10.0), MeshOptions(decimate=0.0))
    assert len(surface.faces) < len(full.faces)
    # the contract of decimate_closed on the full surface: closed, and at most the input
    points, faces = decimate_closed(full.points, full.faces, 100)
    assert is_closed(faces) and len(faces) <= len(full.faces)


def test_coarse_blocks_for_large_surfaces_keep_shape_and_position(tmp_path):
    spacing = (30.0, 6.0, 6.0)  # anisotropic
    grids = np.meshgrid(*[np.arange(n) * v for n, v in zip((30, 100, 100), spacing, strict=True)],
                        indexing="ij")  # fmt: skip
    centre, radii = (450.0, 300.0, 290.0), (330.0, 250.0, 200.0)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
    labels = inside.astype(np.uint16) * 5
    fine = mesh_labels(labels, spacing, tmp_path / "fine", options=MeshOptions(units="nm"))
    options = MeshOptions(units="nm", max_faces=300)  # forces blocks of 3+ voxels
    factor = coarsening(2 * exposed_faces(np.pad(inside, 1)), 8 * options.max_faces)
    assert factor >= 3
    coarse = mesh_labels(labels, spacing, tmp_path / "coarse", options=options)
    (a,), (b,) = fine["objects"], coarse["objects"]
    assert b["watertight"] and a["watertight"]
    assert b["faces"] <= 8 * options.max_faces < a["faces"]
    analytic = 4 / 3 * np.pi * np.prod(radii)
    assert a["volume"] == pytest.approx(analytic, rel=0.06)
    assert b["volume"] == pytest.approx(analytic, rel=0.15)
    # same place: box centres agree within a fine voxel, extents within a coarse block
    np.testing.assert_allclose(
        np.add(b["bbox_min"], b["bbox_max"]) / 2, np.add(a["bbox_min"], a["bbox_max"]) / 2, atol=8
    )
    np.testing.assert_allclose(
        np.subtract(b["bbox_max"], b["bbox_min"]), np.subtract(a["bbox_max"], a["bbox_min"]),
        atol=factor * 30,
    )  # fmt: skip


def _many_labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    labels = np.zeros((20, 60, 60), np.uint16)
    for label in range(1, 13):
        z, y, x = rng.integers(2, (16, 52, 52))
        depth, height, width = rng.integers((2, 3, 3), (5, 8, 8))
        labels[z : z + depth, y : y + height, x : x + width] = label
    labels[1, 1, 1] = 20  # a single voxel is an object too
    return labels


def test_workers_give_the_same_folder_as_one_process(tmp_path):
    labels = _many_labels()
    one = mesh_labels(labels, (40.0, 8.0, 8.0), tmp_path / "one", options=MeshOptions(workers=1))
    two = mesh_labels(labels, (40.0, 8.0, 8.0), tmp_path / "two", options=MeshOptions(workers=2))
    assert one == two
    assert [o["label"] for o in one["objects"]] == sorted(np.unique(labels)[1:].tolist())
    assert all(o["watertight"] for o in one["objects"])
    for entry in one["objects"]:
        assert (tmp_path / "one" / entry["file"]).read_bytes() == (
            tmp_path / "two" / entry["file"]
        ).read_bytes()


@pytest.mark.realdata
def test_flyem_neurons_are_closed_and_outward(shared_data, tmp_path):
    path = shared_data / "flyem_medulla_10nm" / "neuron_labels.tif"
    with tifffile.TiffFile(path) as tif:
        voxel = json.loads(tif.pages[0].description)["voxel_size_nm"]
        labels = tif.asarray()[:64, :64, :64]
    manifest = mesh_labels(labels, voxel, tmp_path / "m", class_name="neuron")
    ids = np.unique(labels)
    assert len(manifest["objects"]) == np.count_nonzero(ids)
    assert all(o["watertight"] and o["volume"] > 0 for o in manifest["objects"])
    # the objects' volumes add up to the labelled volume (in um^3, 10 nm voxels)
    total = sum(o["volume"] for o in manifest["objects"])
    assert total == pytest.approx(np.count_nonzero(labels) * 1e-6, rel=0.1)
    # GLB faces wound outwards, and the stored vertex normals agree with the faces
    for entry in manifest["objects"][:20]:
        mesh = trimesh.load(tmp_path / "m" / entry["file"], force="mesh", process=False)
        assert mesh.volume > 0
        corners = mesh.vertex_normals[mesh.faces]  # (faces, 3 corners, 3)
        agree = np.einsum("fcj,fj->fc", corners, mesh.face_normals)
        assert np.mean(agree > 0) > 0.95


def test_largest_meshes_only_the_biggest_labels(tmp_path):
    labels = _many_labels()
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    expected = sorted(ids[np.argsort(-counts, kind="stable")[:3]].tolist())
    manifest = mesh_labels(labels, (40.0, 8.0, 8.0), tmp_path / "top", largest=3)
    assert [o["label"] for o in manifest["objects"]] == expected
    with pytest.raises(VemvizError, match="at least 1"):
        mesh_labels(labels, (40.0, 8.0, 8.0), tmp_path / "none", largest=0)


def _thick_section_ball(spacing, centre, radius) -> np.ndarray:
    """A ball sampled at the centres of thick sections (a voxel is in if its centre is)."""
    shape = (14, 110, 110)
    grids = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, spacing, strict=True)],
                        indexing="ij")  # fmt: skip
    return (sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2).astype(
        np.uint8
    )


def test_interpolated_thick_sections_follow_the_true_surface():
    spacing, centre, radius = (60.0, 6.0, 6.0), (390.0, 330.0, 330.0), 300.0
    labels = _thick_section_ball(spacing, centre, radius)
    box = (slice(0, 14), slice(0, 110), slice(0, 110))

    def radial_error(options: MeshOptions) -> tuple[float, object]:
        surface = label_surface(labels, box, 1, spacing, options)
        distance = np.linalg.norm(surface.points[:, ::-1] - centre, axis=1)  # points are x, y, z
        return float(np.sqrt(np.mean((distance - radius) ** 2))), surface

    stepped, plain = radial_error(MeshOptions(units="nm"))
    interpolated, smooth = radial_error(MeshOptions(units="nm", interpolate_z=True))
    assert smooth.closed and plain.closed
    assert signed_volume(smooth.points, smooth.faces) == pytest.approx(
        4 / 3 * np.pi * radius**3, rel=0.08
    )
    # section steps of 60 nm: the stepped surface is tens of nm off the ball, the interpolated
    # one a fraction of a section
    assert interpolated < 0.5 * stepped and interpolated < 6.0, (interpolated, stepped)
    # coarsened (in-plane blocks only: sections are never joined), still on the ball
    coarse, surface = radial_error(MeshOptions(units="nm", interpolate_z=True, max_faces=2000))
    assert len(surface.faces) <= 2000 and coarse < 0.5 * stepped, coarse


def test_interpolate_z_needs_thick_sections_and_works_by_blocks(tmp_path, capsys):
    from vemviz import Volume, stages

    labels = _thick_section_ball((60.0, 6.0, 6.0), (390.0, 330.0, 330.0), 300.0)
    labels[:, :, 100:] = 2  # a second object, a slab at the volume's edge
    volume = Volume(labels, (60.0, 6.0, 6.0))
    stages.mesh(volume, tmp_path / "plain")
    assert "10.0x thicker" in " ".join(capsys.readouterr().err.split())
    # by blocks each object is meshed on its own box: the same surfaces as in memory
    from vemviz.blockmesh import mesh_blocks

    options = MeshOptions(units="nm", interpolate_z=True)
    whole = mesh_labels(labels, volume.voxel_size_nm, tmp_path / "whole", options=options)
    blocks = mesh_blocks(volume, tmp_path / "blocks", options=options, block=(5, 40, 40))
    assert len(blocks["objects"]) == len(whole["objects"]) == 2
    for a, b in zip(whole["objects"], blocks["objects"], strict=True):
        assert (a["label"], a["faces"], a["vertices"]) == (b["label"], b["faces"], b["vertices"])
        assert b["watertight"] and (b["volume"], b["bbox_min"], b["bbox_max"]) == (
            a["volume"], a["bbox_min"], a["bbox_max"]
        )  # fmt: skip
    # labels over the budget go by blocks, where an object over it is refused by name
    with pytest.raises(VemvizError, match="label 1 spans"):
        stages.mesh(volume, tmp_path / "small", interpolate_z=True, memory_budget=2**16)
    assert not (tmp_path / "small").exists()
    iso = Volume(labels, (6.0, 6.0, 6.0))  # no thick sections: the same surface either way
    a = stages.mesh(iso, tmp_path / "a", units="nm")
    b = stages.mesh(iso, tmp_path / "b", units="nm", interpolate_z=True)
    assert a["objects"] == b["objects"]
