"""Tests for vemviz.align on real FlyEM FIB-SEM sections with known synthetic motion.

The published FlyEM stack is not motion-free at the sub-pixel level: registering its
consecutive sections finds ~0.5 px and ~0.2 degrees per section (oblique neurites). The truth
for a perturbed stack is therefore "the alignment of the unperturbed stack, moved by the known
perturbation": ``A_z T_z = B_z G`` for every section z, with A_z the applied motion, T_z the
recovered transform, B_z the transform recovered from the unperturbed stack and G one global
transform (the output frame is only defined up to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from vemviz.align import align_stack, apply_transforms, register_sections
from vemviz.errors import VemvizError

DATA = Path(__file__).parents[2] / "shared" / "data" / "flyem_medulla_10nm"
N, SIZE, MARGIN, Z0 = 24, 200, 25, 100
CORNERS = np.array([[0, SIZE - 1, 0, SIZE - 1], [0, 0, SIZE - 1, SIZE - 1], [1, 1, 1, 1.0]])


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    if not (DATA / "raw.tif").exists():
        pytest.skip(f"real EM data not found at {DATA}")
    return tifffile.imread(DATA / "raw.tif")[Z0 : Z0 + N]


@pytest.fixture(scope="module")
def base(raw: np.ndarray) -> np.ndarray:
    return raw[:, MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE].copy()


def _h(matrix: np.ndarray | list) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=float), [0, 0, 1]])


def _perturb(
    raw: np.ndarray, seed: int, deform: float = 0.0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Crop each section after a random rotation (+-1 deg), a random linear deformation
    (``I + U(-deform, deform)`` per entry: scale and shear) and shift (+-4 px).

    Returns the stack and A_z (3x3, crop pixel -> unperturbed crop pixel).
    """
    rng = np.random.default_rng(seed)
    centre = np.array([(raw.shape[2] - 1) / 2, (raw.shape[1] - 1) / 2])
    stack, motions = np.zeros((N, SIZE, SIZE), raw.dtype), []
    crop = np.array([[1, 0, MARGIN], [0, 1, MARGIN], [0, 0, 1.0]])
    for z in range(N):
        angle = np.radians(rng.uniform(-1, 1))
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        if deform:
            rot = rot @ (np.eye(2) + rng.uniform(-deform, deform, (2, 2)))
        shift = centre - rot @ centre + rng.uniform(-4, 4, 2)
        to_raw = _h(np.hstack([rot, shift[:, None]])) @ crop
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        stack[z] = cv2.warpAffine(raw[z], to_raw[:2], (SIZE, SIZE), flags=flags)
        motions.append(np.linalg.inv(crop) @ to_raw)
    return stack, motions


def _motion_errors(motions: list[np.ndarray], found: dict, reference: dict) -> np.ndarray:
    """Per section, the largest corner distance between A_z T_z G^-1 and B_z (pixels)."""
    t = [_h(m) for m in found["transforms"]["matrices"]]
    b = [_h(m) for m in reference["transforms"]["matrices"]]
    gauge_inv = np.linalg.inv(np.linalg.inv(b[0]) @ motions[0] @ t[0])
    return np.array(
        [
            np.abs((motions[z] @ t[z] @ gauge_inv @ CORNERS - b[z] @ CORNERS)[:2]).max()
            for z in range(N)
        ]
    )


@pytest.mark.parametrize(("mode", "tolerance"), [("rigid", 0.5), ("affine", 1.0)])
def test_known_motion_is_recovered_without_drift(
    raw: np.ndarray, base: np.ndarray, mode: str, tolerance: float
) -> None:
    stack, motions = _perturb(raw, seed=0)
    aligned, report = align_stack(stack, mode)
    _, reference = align_stack(base, mode)
    errors = _motion_errors(motions, report, reference)
    print(
        f"{mode}: max error {errors.max():.3f} px, last section {errors[-1]:.3f} px, NCC "
        f"{report['mean_ncc_before']:.3f} -> {report['mean_ncc_after']:.3f}"
    )
    assert errors.max() < tolerance  # every section, so also no drift at the last one
    assert report["mean_ncc_after"] > report["mean_ncc_before"] + 0.1
    assert report["mean_ncc_after"] == pytest.approx(reference["mean_ncc_after"], abs=0.01)
    assert aligned.dtype == stack.dtype and aligned.shape == stack.shape
    if mode == "rigid":
        for matrix in report["transforms"]["matrices"]:
            assert np.allclose(np.linalg.det(np.asarray(matrix)[:, :2]), 1.0)


def test_affine_recovers_the_scale_and_shear_of_each_section(
    raw: np.ndarray, base: np.ndarray
) -> None:
    stack, motions = _perturb(raw, seed=2, deform=0.02)
    _, reference = align_stack(base, "rigid")
    errors = {mode: _motion_errors(motions, align_stack(stack, mode)[1], reference)
              for mode in ("rigid", "affine")}  # fmt: skip
    print({mode: f"max {e.max():.3f} px, mean {e.mean():.3f} px" for mode, e in errors.items()})
    assert errors["affine"].max() < 2.0
    assert errors["affine"].mean() < 0.5 * errors["rigid"].mean()


def test_affine_does_not_wander_on_an_undeformed_stack(base: np.ndarray) -> None:
    _, report = align_stack(base, "affine")
    linear = np.array(report["transforms"]["matrices"])[:, :, :2]
    singular = np.linalg.svd(linear, compute_uv=False)
    print(f"singular values of the affine parts: {singular.min():.4f}..{singular.max():.4f}")
    assert np.abs(singular - 1).max() < 0.01


def test_blank_and_skipped_sections_are_bridged(raw: np.ndarray, base: np.ndarray) -> None:
    stack, motions = _perturb(raw, seed=1)
    stack[10] = 0
    aligned, report = align_stack(stack, "rigid", skip=[5])
    _, reference = align_stack(base, "rigid")
    assert report["bad_sections"] == [5, 10]
    assert report["sections"][10]["status"] == "bridged"
    assert {"z": 11, "ref": 9} in [{"z": p["z"], "ref": p["ref"]} for p in report["pairs"]]
    good = [z for z in range(N) if z not in (5, 10)]
    errors = _motion_errors(motions, report, reference)
    print(f"bridged: max error over good sections {errors[good].max():.3f} px")
    assert errors[good].max() < 0.5
    matrices = np.array(report["transforms"]["matrices"])
    assert np.allclose(matrices[10], (matrices[9] + matrices[11]) / 2, atol=0.05)
    assert not aligned[10].any()


def test_elastic_corrects_a_warped_section(base: np.ndarray) -> None:
    k = 12
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dx, dy = 3 * np.sin(2 * np.pi * ys / SIZE), 3 * np.cos(2 * np.pi * xs / SIZE)
    warped = base.copy()
    warped[k] = cv2.remap(
        base[k], xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )

    def ncc_k(stack: np.ndarray) -> float:
        inner = stack[:, 20:-20, 20:-20].astype(float)
        pairs = [np.corrcoef(inner[k].ravel(), inner[j].ravel())[0, 1] for j in (k - 1, k + 1)]
        return float(np.mean(pairs))

    affine, _ = align_stack(warped, "affine")
    elastic, report = align_stack(warped, "elastic")
    print(
        f"warped section NCC to neighbours: affine {ncc_k(affine):.3f}, "
        f"elastic {ncc_k(elastic):.3f}, unwarped data {ncc_k(base):.3f}"
    )
    assert ncc_k(elastic) > ncc_k(affine) + 0.04
    assert ncc_k(elastic) > ncc_k(base) - 0.01  # as similar as before the warp
    assert np.array_equal(apply_transforms(warped, report["transforms"], 1), elastic)

    _, affine_clean = align_stack(base, "affine")
    _, elastic_clean = align_stack(base, "elastic")
    meshes = np.array(elastic_clean["transforms"]["displacements"])
    print(
        f"unwarped stack: NCC affine {affine_clean['mean_ncc_after']:.4f}, elastic "
        f"{elastic_clean['mean_ncc_after']:.4f}, largest mesh displacement "
        f"{np.abs(meshes).max():.2f} px"
    )
    assert elastic_clean["mean_ncc_after"] >= affine_clean["mean_ncc_after"] - 0.002
    assert np.abs(meshes).max() < 3.0


def test_detrend_removes_linear_drift(base: np.ndarray) -> None:
    drift = np.array([1.5, -1.0])
    stack = np.stack(
        [
            cv2.warpAffine(
                base[z], np.array([[1, 0, -drift[0] * z], [0, 1, -drift[1] * z]]), (SIZE, SIZE)
            )
            for z in range(N)
        ]
    )  # section z shows the content at x + z * drift
    centre = np.array([(SIZE - 1) / 2, (SIZE - 1) / 2, 1.0])

    def centre_slope(stack: np.ndarray, detrend: bool) -> np.ndarray:
        """Per-section motion of the output centre in the section, fitted linearly along z."""
        _, report = align_stack(stack, "rigid", detrend=detrend)
        path = np.array(report["transforms"]["matrices"]) @ centre
        return np.polyfit(np.arange(N), path, 1)[0]

    content = centre_slope(base, False)  # the published stack's own slow motion
    kept, removed = centre_slope(stack, False), centre_slope(stack, True)
    print(f"centre slope px/section: content {content}, drifted {kept}, detrended {removed}")
    assert np.allclose(kept - content, -drift, atol=0.1)  # T_z undoes the drift
    assert np.allclose(removed, 0, atol=1e-6)


def test_apply_transforms_keeps_labels_exact(raw: np.ndarray) -> None:
    labels = tifffile.imread(DATA / "neuron_labels.tif")[Z0 : Z0 + N, :SIZE, :SIZE]
    stack, _ = _perturb(raw, seed=2)
    _, report = align_stack(stack, "rigid")
    transforms = json.loads(json.dumps(report["transforms"]))  # as saved in the report JSON
    moved = apply_transforms(labels, transforms, order=0)
    assert moved.dtype == labels.dtype
    assert set(np.unique(moved)) <= set(np.unique(labels)) | {0}
    shift = {
        "shape": list(labels.shape),
        "displacements": None,
        "matrices": [[[1, 0, 3], [0, 1, -2]]] * N,
    }
    shifted = apply_transforms(labels.astype(np.uint64), shift, order=0)
    assert np.array_equal(shifted[:, 2:, : SIZE - 3], labels[:, : SIZE - 2, 3:])
    assert not shifted[:, :2].any() and not shifted[:, :, SIZE - 3 :].any()


def test_bad_input_raises(base: np.ndarray) -> None:
    with pytest.raises(VemvizError, match="unknown alignment mode"):
        align_stack(base, "warp")
    with pytest.raises(VemvizError, match="dimensions"):
        align_stack(base[0], "rigid")
    with pytest.raises(VemvizError, match="fewer than two"):
        align_stack(np.zeros((4, 32, 32), np.uint8), "rigid")
    with pytest.raises(VemvizError, match="outside"):
        align_stack(base, "rigid", skip=[N])
    _, report = align_stack(base[:3], "rigid")
    with pytest.raises(VemvizError, match="shape"):
        apply_transforms(base, report["transforms"], order=1)
    with pytest.raises(VemvizError, match="order"):
        apply_transforms(base[:3], report["transforms"], order=2)


def test_smooth_keeps_slow_drift_and_removes_jitter(base: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    drift = np.array([1.0, -0.5])
    jitter = rng.uniform(-3, 3, (N, 2))
    shifts = drift * np.arange(N)[:, None] + jitter  # section z shows content at x + shift
    stack = np.stack(
        [
            cv2.warpAffine(base[z], np.array([[1, 0, -shifts[z, 0]], [0, 1, -shifts[z, 1]]]),
                           (SIZE, SIZE))
            for z in range(N)
        ]
    )  # fmt: skip
    centre = np.array([(SIZE - 1) / 2, (SIZE - 1) / 2, 1.0])
    _, plain = align_stack(stack, "rigid")
    _, smooth = align_stack(stack, "rigid", smooth=4.0)
    _, content = align_stack(base, "rigid")
    own = np.array(content["transforms"]["matrices"]) @ centre  # the stack's own slow motion
    path_plain = np.array(plain["transforms"]["matrices"]) @ centre - own
    path_smooth = np.array(smooth["transforms"]["matrices"]) @ centre
    z = np.arange(N)
    slope_plain = np.polyfit(z, path_plain, 1)[0]
    slope_smooth = np.polyfit(z, path_smooth, 1)[0]
    print(f"slope plain {slope_plain}, smooth {slope_smooth}, drift {drift}")
    assert np.allclose(slope_plain, -drift, atol=0.1)  # plain alignment cancels the drift
    assert np.allclose(slope_smooth, 0, atol=0.05)  # smoothing keeps drift and content motion
    # ... but still removes the jitter: T_z moves the centre by -jitter_z (up to its slow part)
    undone = path_smooth + jitter

    def detrended(path: np.ndarray) -> np.ndarray:
        return path - np.column_stack([np.polyval(np.polyfit(z, path[:, i], 1), z) for i in (0, 1)])

    left, before = np.sqrt(np.mean(detrended(undone) ** 2)), np.sqrt(np.mean(jitter**2))
    print(f"jitter RMS {before:.2f} px, left {left:.2f} px")
    assert left < 0.35 * before  # the slow part of white jitter (~0.3) cannot be told apart
    assert smooth["smooth_sections"] == 4.0


def test_cli_saves_transforms_and_applies_them_to_labels(raw: np.ndarray, tmp_path: Path) -> None:
    from vemviz.cli import main

    labels = tifffile.imread(DATA / "neuron_labels.tif")[Z0 : Z0 + N, :SIZE, :SIZE]
    stack, _ = _perturb(raw, seed=3)
    tifffile.imwrite(tmp_path / "raw.tif", stack)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    out = tmp_path / "aligned.tif"
    assert main(["align", str(tmp_path / "raw.tif"), "--out", str(out), "--skip", "4"]) == 0
    saved = tmp_path / "aligned.tif.transforms.json"
    transforms = json.loads(saved.read_text())["transforms"]
    assert transforms["mode"] == "rigid" and len(transforms["matrices"]) == N
    moved_path = tmp_path / "labels_aligned.tif"
    argv = ["align", str(tmp_path / "labels.tif"), "--apply-transforms", str(saved),
            "--out", str(moved_path)]  # fmt: skip
    assert main(argv) == 0
    moved = tifffile.imread(moved_path)
    assert moved.dtype == labels.dtype and moved.shape == labels.shape
    assert np.array_equal(moved, apply_transforms(labels, transforms, order=0))
    assert set(np.unique(moved)) <= set(np.unique(labels)) | {0}
    assert main(["align", str(tmp_path / "labels.tif"), "--apply-transforms",
                 str(tmp_path / "raw.tif"), "--out", str(tmp_path / "x.tif")]) == 2  # fmt: skip


def test_dissimilar_serial_sections_are_not_thrown_off() -> None:
    """The VNC ssTEM sections (50 nm apart, consecutive NCC ~0.3) are published registered;
    phase correlation alone sent 13 of the 37 pairs of 512 px crops 40-2000 px away, and the
    last section 577 px out of the frame."""
    path = DATA.parent / "vnc_sstem" / "raw.tif"
    if not path.exists():
        pytest.skip(f"real EM data not found at {path}")
    stack = tifffile.imread(path)[:, :512, :512]
    _, report = align_stack(stack, "rigid")
    matrices = np.array(report["transforms"]["matrices"])
    angles = np.degrees(np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0]))
    shifts = np.abs(matrices[:, :, 2]).max(axis=1)
    print(f"largest rotation {np.abs(angles).max():.2f} deg, shift {shifts.max():.1f} px, "
          f"NCC {report['mean_ncc_before']:.3f} -> {report['mean_ncc_after']:.3f}")  # fmt: skip
    assert np.abs(angles).max() < 2.0
    assert shifts.max() < 40
    assert np.abs(np.diff(angles)).max() < 1.0  # no jump between neighbouring sections
    assert report["mean_ncc_after"] > report["mean_ncc_before"] + 0.03


def test_a_wrong_pair_loses_its_pull_on_the_solve() -> None:
    """Five sections that truly do not move; the (3, 1) registration reports 9 degrees and
    40 px with a weight as large as the others'."""
    from vemviz.align import _robust_solve, _solve_transforms

    good = list(range(5))
    pairs = [(z, k) for z in good for k in (z - 1, z - 2) if k >= 0]
    warps = {pair: np.eye(2, 3) for pair in pairs}
    angle = np.radians(9.0)
    warps[(3, 1)] = np.array([[np.cos(angle), -np.sin(angle), 0.3],
                              [np.sin(angle), np.cos(angle), 0.0]])  # fmt: skip
    weights = {pair: 1.0 for pair in pairs}

    def worst_px(solved: dict[int, np.ndarray]) -> float:
        corners = np.array([[-1, -1, 1, 1], [-1, 1, -1, 1], [1, 1, 1, 1.0]])
        return 128 * max(np.abs((m - np.eye(2, 3)) @ corners).max() for m in solved.values())

    plain = worst_px(_solve_transforms(good, pairs, warps, weights, True))
    robust = worst_px(_robust_solve(good, pairs, warps, weights, True, 128.0))
    print(f"worst corner error: plain {plain:.2f} px, robust {robust:.2f} px")
    assert plain > 5.0
    assert robust < 0.5


@pytest.mark.parametrize("mode", ["rigid", "elastic"])
def test_registration_in_parallel_slab_tasks_gives_the_same_report(raw, mode) -> None:
    """Every pass of `register_sections` as tasks of one z slab each, on two threads, from a
    lazily read stack (4-section chunks: a section's references lie in the slab before it):
    the in-process report exactly, bridged sections included."""
    import dask.array as da

    from vemviz.chunked import Runner
    from vemviz.slices import SliceSource

    stack, _ = _perturb(raw, seed=4)
    stack[9] = 0
    want = register_sections(SliceSource(stack), mode, skip=[14])
    calls: list[int] = []
    with Runner(workers=2) as runner:

        def run(tasks, description):
            calls.append(len(tasks))
            return runner.run(tasks, description)

        lazy = SliceSource(da.from_array(stack, chunks=(4, SIZE, SIZE)))
        got = register_sections(lazy, mode, skip=[14], run=run)
    assert min(calls) >= N // 4 - 1  # every pass went in chunk tasks
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert got["bad_sections"] == [9, 14]
