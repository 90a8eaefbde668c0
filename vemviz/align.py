"""Align the sections of a (z, y, x) stack to each other.

Method. Sections whose intensity spread is tiny (standard deviation below a tenth of the
stack's median: blank, or lost) or that are listed in ``skip`` are *bad*; they take no part in
registration. Every good section z is registered to its ``neighbours`` nearest previous good
sections (z-1 and z-2 by default; across a bad section this bridges z-1 to z+1):

* ``cv2.findTransformECC`` refines a Euclidean warp on an image pyramid, coarse to fine, from
  two starts: no motion and the phase-correlation translation (it handles shifts of many
  pixels, but between dissimilar sections it can pick a spurious peak); the result with the
  higher NCC is kept (for ``affine``, it is refined once more to an affine warp at full
  resolution);
* each pair gives a constraint ``T_k = W_zk T_z`` between the section transforms (a transform
  maps output pixels to the section's own pixels), weighted by the pair's NCC after warping
  to the fourth power: a registration across a gap that half failed (NCC 0.25 against 0.85
  for its neighbours) then weighs 1/100 as much instead of 1/3, which on FlyEM with two blank
  sections cut the rigid error from 6.8 to 1.4 px.

All section transforms are solved jointly by sparse linear least squares over every pairwise
constraint (in coordinates centred on the image and scaled by half its size, so rotations and
translations weigh alike). Because each section is tied to two earlier ones, one bad pair
cannot derail the rest of the stack and registration errors do not add up as a random walk.
The solve is repeated with each pair's weight divided by ``1 + (r / 3 px)^2``, r being how
far (worst image corner) the pair's warp disagrees with the previous solution (iteratively
reweighted least squares, Cauchy): a registration that went wrong disagrees with the pairs
around it and loses its pull. (On 512 px crops of the VNC ssTEM stack, a pair that found a
9 degree rotation between sections whose other pairs agree within 1 degree had turned the
sections around it by about 1.3 degrees.)
The first good section anchors the solve; the solution is then re-expressed so that the mean
transform over the stack is the identity (the aligned stack sits where the sections sit on
average instead of following the first one).

Trajectory smoothing (``smooth=SIGMA``, reference-free, off by default): the solved trajectory
is low-passed along z (Gaussian-weighted local linear fit, SIGMA sections), ``S_z``, and every
section keeps only the fast part ``T_z S_z^-1``. Jitter from section to section (cutting,
stage, charging) is removed, while structure that drifts steadily through the stack (an
oblique neurite) stays where the sections put it instead of being straightened.
``detrend=True`` removes only the linear trend of the translations along z: it cancels the
shear that a consistent registration bias (oblique structures) builds up, but it also
cancels real linear stage drift, so it is off by default too.
Rigid transforms are solved as similarities and projected back to rotations (scale 1). Bad
sections get transforms interpolated linearly between their nearest good neighbours.

``affine`` adds to the rigid solve a linear deformation per section (scale and shear from
cutting and compression). The affine transforms ``A_z`` are solved jointly from the affine
warps in the same way, and each section keeps of its departure from the rigid solve,
``D_z = R_z^-1 A_z``, only the part that differs from its neighbours along z (high-passed
like the elastic meshes below, ``deformation_sigma`` sections); its transform is
``R_z D_z``. Solved on its own, the affine trajectory follows the anatomy's apparent shear and
scale from section to section: on 24 registered FlyEM sections its scale drifted by up to
7.6 %, and on the alignment benchmark it left 4.5 px of residual against 1.3 px for rigid.

``elastic`` adds, after a rigid solve, a smooth displacement field per section. Dense
Farneback optical flow is measured between each section and its previous good neighbours
(rigidly aligned), area-averaged onto a coarse mesh (nodes every ``mesh_spacing`` pixels),
and the per-node displacements of all sections are solved jointly by least squares
(``D_k - D_z = flow_zk``, weight 1 per pair) with a weak spring (``stiffness``) towards the
rigid position. The flows also follow the anatomy, which changes slowly along z, whereas
section warps (compression, chatter, charging) are independent from section to section; so
the solved meshes are finally high-passed along z (the same local linear fit,
``deformation_sigma`` sections): each section keeps the part of its displacement that differs
from its neighbourhood in z. The mesh is interpolated bicubically to a dense field.

Every transform is stored in the report (2x3 matrices, and for ``elastic`` the coarse mesh of
``(dx, dy)`` pixels) so that `apply_transforms` can re-apply it to another volume of the same
shape, e.g. labels with ``order=0``. Output dtype = input dtype; pixels mapped from outside a
section are 0. `register_sections` computes the report from a `vemviz.slices.SliceSource`,
which holds only a few sections at a time (each with its previous good neighbours; the
elastic flows and the NCCs after alignment warp the sections one at a time), so a stack on
disk need not fit in memory; `align_stack` is it for an array, followed by `apply_transforms`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from vemviz.errors import VemvizError
from vemviz.flow import dense_flow, to_dtype, to_uint8_pair
from vemviz.progress import track
from vemviz.slices import Run, SliceSource, sweep

MODES = ("rigid", "affine", "elastic")
ORDERS = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}
_BLANK_STD_FRACTION = 0.1
_COARSEST_SIDE = 64
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
_MIN_WEIGHT = 0.05
_WEIGHT_POWER = 4
_ROBUST_PX = 3.0  # Cauchy scale of the pair residuals
_ROBUST_ROUNDS = 4

# similarity parameters (p, q, c, f) -> 2x3 entries [[p, -q, c], [q, p, f]] (row-major)
_SIMILARITY_BASIS = np.array(
    [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)


# ------------------------------------------------------------------------------- helpers


def _as3(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def _normaliser(shape: tuple[int, int]) -> np.ndarray:
    """3x3 map from pixel (x, y) to coordinates centred on the image, half-size = 1."""
    h, w = shape
    s = max(h, w) / 2.0
    return np.array([[1 / s, 0, -(w - 1) / (2 * s)], [0, 1 / s, -(h - 1) / (2 * s)], [0, 0, 1]])


def _to_rigid(matrix: np.ndarray) -> np.ndarray:
    """Project a similarity/near-rigid 2x3 matrix onto a rotation (scale 1)."""
    p = (matrix[0, 0] + matrix[1, 1]) / 2
    q = (matrix[1, 0] - matrix[0, 1]) / 2
    scale = math.hypot(p, q)
    out = matrix.copy()
    out[:, :2] = np.array([[p, -q], [q, p]]) / scale
    return out


def _standardise(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised cross-correlation of two equally shaped arrays (0 when one is constant)."""
    x = x.astype(np.float64) - x.mean()
    y = y.astype(np.float64) - y.mean()
    denom = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denom) if denom > 0 else 0.0


def _bad_sections(stds: list[float], skip: Sequence[int]) -> list[int]:
    listed = set(skip)
    kept = [s for z, s in enumerate(stds) if z not in listed]
    limit = _BLANK_STD_FRACTION * float(np.median(kept)) if kept else 0.0
    return [z for z, s in enumerate(stds) if z in listed or s <= limit or s == 0]


# --------------------------------------------------------------------- pair registration


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    levels = [image]
    while min(levels[-1].shape) >= 2 * _COARSEST_SIDE:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels[::-1]


def _register(
    fixed: np.ndarray, moving: np.ndarray, affine: bool
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """2x3 Euclidean W with moving(W x) ~ fixed(x), the affine refinement of W when ``affine``
    (else None), and the NCC of the overlap after warping with W.

    Both sections are standardised and multiplied by a Hanning window (their borders, which
    a shift moves out of the overlap, weigh less). Two starts are refined (ECC on the pyramid)
    and the one with the higher NCC is kept: no motion, and the phase-correlation shift.
    Phase correlation alone picks spurious peaks between dissimilar sections (50 nm ssTEM:
    of the 37 pairs of 512 px crops of the VNC stack, 13 moved by 40-2000 px).
    """
    window = cv2.createHanningWindow(fixed.shape[::-1], cv2.CV_32F)
    fixed, moving = _standardise(fixed) * window, _standardise(moving) * window
    (dx, dy), _ = cv2.phaseCorrelate(fixed, moving)
    fixed_levels, moving_levels = _pyramid(fixed), _pyramid(moving)
    best, best_ncc = np.eye(2, 3, dtype=np.float32), -np.inf
    for start in ((0.0, 0.0), (dx, dy)):
        warp = np.array([[1, 0, start[0]], [0, 1, start[1]]], dtype=np.float32)
        warp[:, 2] *= 2.0 ** (1 - len(fixed_levels))
        for level, (f, m) in enumerate(zip(fixed_levels, moving_levels, strict=True)):
            if level:
                warp[:, 2] *= 2
            warp = _ecc(f, m, warp, cv2.MOTION_EUCLIDEAN)
        score = _pair_ncc(fixed, moving, warp)
        if score > best_ncc:
            best, best_ncc = warp, score
    refined = _ecc(fixed, moving, best.copy(), cv2.MOTION_AFFINE) if affine else None
    return (
        best.astype(np.float64),
        None if refined is None else refined.astype(np.float64),
        best_ncc,
    )


def _ecc(fixed: np.ndarray, moving: np.ndarray, warp: np.ndarray, motion: int) -> np.ndarray:
    """``warp`` refined by ECC with ``motion``; unchanged where ECC does not converge."""
    try:
        return cv2.findTransformECC(fixed, moving, warp, motion, _ECC_CRITERIA, None, 3)[1]
    except cv2.error:
        return warp


def _pair_ncc(fixed: np.ndarray, moving: np.ndarray, warp: np.ndarray) -> float:
    size = fixed.shape[::-1]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(moving, warp, size, flags=flags)
    valid = cv2.warpAffine(np.ones_like(moving), warp, size, flags=flags) > 0.999
    return ncc(fixed[valid], warped[valid]) if valid.sum() > 16 else 0.0


def _reference_pairs(good: list[int], neighbours: int) -> list[tuple[int, int]]:
    """(z, k) pairs: each good section with its ``neighbours`` previous good sections."""
    return [(z, good[j]) for i, z in enumerate(good) for j in range(max(0, i - neighbours), i)]


# --------------------------------------------------------------------------- global solve


def _solve_transforms(
    good: list[int],
    pairs: list[tuple[int, int]],
    warps: dict[tuple[int, int], np.ndarray],
    weights: dict[tuple[int, int], float],
    rigid: bool,
) -> dict[int, np.ndarray]:
    """Least squares T_k = W T_z over all pairs (normalised coords), good[0] fixed to I."""
    basis = _SIMILARITY_BASIS if rigid else np.eye(6)
    n_par = basis.shape[1]
    column = {z: (i - 1) * n_par for i, z in enumerate(good)}  # good[0] -> negative (fixed)
    identity = np.eye(2, 3).ravel()
    rows, cols, vals, rhs = [], [], [], []
    for r, (z, k) in enumerate(pairs):
        w_a, w_t = warps[(z, k)][:, :2], warps[(z, k)][:, 2]
        # vec(W_A @ T) as a linear map of vec(T) (row-major 2x3)
        compose = np.kron(w_a, np.eye(3))
        root = math.sqrt(weights[(z, k)])
        target = np.array([0, 0, w_t[0], 0, 0, w_t[1]])
        blocks = [(k, np.eye(6)), (z, -compose)]
        constant = np.zeros(6)
        for section, block in blocks:
            if column[section] < 0:
                constant += block @ identity
                continue
            coef = block @ basis
            for i in range(6):
                for j in range(n_par):
                    rows.append(6 * r + i)
                    cols.append(column[section] + j)
                    vals.append(root * coef[i, j])
        rhs.extend(root * (target - constant))
    shape = (len(rhs), n_par * (len(good) - 1))
    a = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=shape)
    solution = np.atleast_1d(scipy.sparse.linalg.spsolve((a.T @ a).tocsc(), a.T @ np.array(rhs)))
    result = {good[0]: np.eye(2, 3)}
    for z in good[1:]:
        result[z] = (basis @ solution[column[z] : column[z] + n_par]).reshape(2, 3)
    return result


def _pair_residual_px(
    warp: np.ndarray, t_z: np.ndarray, t_k: np.ndarray, half_size: float
) -> float:
    """How far (px, worst image corner) ``W T_z`` lands from ``T_k`` for a pair's warp ``W``."""
    corners = np.array([[-1, -1, 1, 1], [-1, 1, -1, 1], [1, 1, 1, 1]], dtype=np.float64)
    miss = (_as3(warp) @ _as3(t_z) - _as3(t_k)) @ corners
    return half_size * float(np.linalg.norm(miss[:2], axis=0).max())


def _robust_solve(
    good: list[int],
    pairs: list[tuple[int, int]],
    warps: dict[tuple[int, int], np.ndarray],
    weights: dict[tuple[int, int], float],
    rigid: bool,
    half_size: float,
) -> dict[int, np.ndarray]:
    """`_solve_transforms`, re-solved with each pair's weight divided by
    ``1 + (residual / _ROBUST_PX)^2`` (Cauchy): a registration that went wrong disagrees with
    the other pairs around it and so loses its pull on the solution."""
    current = dict(weights)
    for _ in range(_ROBUST_ROUNDS):
        solved = _solve_transforms(good, pairs, warps, current, rigid)
        for z, k in pairs:
            residual = _pair_residual_px(warps[(z, k)], solved[z], solved[k], half_size)
            current[(z, k)] = weights[(z, k)] / (1 + (residual / _ROBUST_PX) ** 2)
    return _solve_transforms(good, pairs, warps, current, rigid)


def _center_gauge(transforms: dict[int, np.ndarray], rigid: bool) -> dict[int, np.ndarray]:
    """Re-express T_z as T_z G so that the mean transform is the identity."""
    mean = np.mean([_as3(t) for t in transforms.values()], axis=0)
    gauge = np.linalg.inv(mean)[:2]
    if rigid:
        gauge = _to_rigid(gauge)
    out = {z: (_as3(t) @ _as3(gauge))[:2] for z, t in transforms.items()}
    return {z: _to_rigid(t) for z, t in out.items()} if rigid else out


def _detrend(transforms: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    zs = np.array(sorted(transforms), dtype=np.float64)
    if len(zs) < 3:
        return transforms
    shifts = np.array([transforms[int(z)][:, 2] for z in zs])
    slope = np.polyfit(zs - zs.mean(), shifts, 1)[0]
    out = {}
    for z, t in transforms.items():
        t = t.copy()
        t[:, 2] -= slope * (z - zs.mean())
        out[z] = t
    return out


def _local_linear(zs: np.ndarray, values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local linear fit of ``values`` (z, ...) along z, evaluated at each z.

    Unlike a plain Gaussian average it reproduces a linear trend exactly, also at the ends of
    the stack, where a one-sided average would pull the trend inwards.
    """
    flat = values.reshape(len(zs), -1)
    out = np.empty_like(flat)
    for i, z in enumerate(zs):
        weights = np.exp(-0.5 * ((zs - z) / sigma) ** 2)
        design = np.column_stack([np.ones_like(zs), zs - z]) * np.sqrt(weights)[:, None]
        coef = np.linalg.lstsq(design, flat * np.sqrt(weights)[:, None], rcond=None)[0]
        out[i] = coef[0]
    return out.reshape(values.shape)


def _smooth_trajectory(
    transforms: dict[int, np.ndarray], sigma: float, rigid: bool
) -> dict[int, np.ndarray]:
    """Keep only the fast part of the motion: ``T_z S_z^-1`` with ``S_z`` the trajectory
    low-passed along z (`_local_linear` with ``sigma`` sections, over the good sections)."""
    zs = np.array(sorted(transforms), dtype=np.float64)
    slow = _local_linear(zs, np.array([_as3(transforms[int(z)]) for z in zs]), sigma)
    out = {}
    for z, smooth in zip(zs, slow, strict=True):
        if rigid:
            smooth = _as3(_to_rigid(smooth[:2]))
        fast = (_as3(transforms[int(z)]) @ np.linalg.inv(smooth))[:2]
        out[int(z)] = _to_rigid(fast) if rigid else fast
    return out


def _fill_bad(transforms: dict[int, np.ndarray], n: int, rigid: bool) -> list[np.ndarray]:
    """Transforms for all n sections; bad ones interpolated between good neighbours."""
    good = np.array(sorted(transforms))
    stacked = np.array([transforms[int(z)] for z in good])
    out = []
    for z in range(n):
        if z in transforms:
            out.append(transforms[z])
            continue
        flat = [np.interp(z, good, stacked[:, i, j]) for i in range(2) for j in range(3)]
        matrix = np.array(flat).reshape(2, 3)
        out.append(_to_rigid(matrix) if rigid else matrix)
    return out


def _to_pixels(matrix: np.ndarray, norm: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(norm) @ _as3(matrix) @ norm)[:2]


# ------------------------------------------------------------------------------- elastic


def _mesh_shape(shape: tuple[int, int], spacing: int) -> tuple[int, int]:
    return max(2, round(shape[0] / spacing)), max(2, round(shape[1] / spacing))


def _coarse_flows(
    references: dict[int, list[int]],
    mesh: tuple[int, int],
    aligned: Callable[[int], np.ndarray],
    z: int,
) -> dict[int, np.ndarray]:
    """Per reference k of section z, the flow from aligned section z to k, area-averaged onto
    the ``mesh`` (rows, cols) and flattened (``aligned(z)``: section z rigidly aligned)."""
    out = {}
    for k in references[z]:
        flow = dense_flow(*to_uint8_pair(aligned(z), aligned(k)))
        out[k] = cv2.resize(flow, mesh[::-1], interpolation=cv2.INTER_AREA).ravel()
    return out


def _elastic_meshes(
    flows: dict[int, dict[int, np.ndarray]],
    good: list[int],
    pairs: list[tuple[int, int]],
    mesh: tuple[int, int],
    stiffness: float,
) -> dict[int, np.ndarray]:
    """Per good section, a (gh, gw, 2) mesh of (dx, dy) solved jointly over all pairs
    (``flows[z][k]``: `_coarse_flows` of the pair)."""
    gh, gw = mesh
    index = {z: i for i, z in enumerate(good)}
    system = scipy.sparse.lil_matrix(stiffness * scipy.sparse.eye(len(good)))
    rhs = np.zeros((len(good), gh * gw * 2))
    for z, k in pairs:
        coarse = flows[z][k]
        i, j = index[z], index[k]
        # normal equations of D_k - D_z = flow
        system[i, i] += 1
        system[j, j] += 1
        system[i, j] -= 1
        system[j, i] -= 1
        rhs[j] += coarse
        rhs[i] -= coarse
    solution = scipy.sparse.linalg.spsolve(system.tocsc(), rhs).reshape(len(good), -1)
    return {z: solution[index[z]].reshape(gh, gw, 2) for z in good}


def _high_pass(meshes: dict[int, np.ndarray], sigma: float) -> dict[int, np.ndarray]:
    """Subtract from every section's mesh its slow part along z (`_local_linear`, ``sigma``)."""
    zs = np.array(sorted(meshes), dtype=np.float64)
    stacked = np.array([meshes[int(z)] for z in zs])
    slow = _local_linear(zs, stacked, sigma)
    return {int(z): stacked[i] - slow[i] for i, z in enumerate(zs)}


def _deformations(
    rigid: dict[int, np.ndarray], affine: dict[int, np.ndarray], sigma: float
) -> dict[int, np.ndarray]:
    """Per section, the affine's departure from the rigid solve, ``D_z = R_z^-1 A_z``, with its
    slow part along z removed (`_high_pass`, ``sigma`` sections; 0 keeps all of it)."""
    departures = {z: (np.linalg.inv(_as3(rigid[z])) @ _as3(affine[z]))[:2] for z in rigid}
    if sigma <= 0:
        return departures
    identity = np.eye(2, 3)
    return {z: identity + fast for z, fast in _high_pass(departures, sigma).items()}


def _dense(mesh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mesh.astype(np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)


# -------------------------------------------------------------------------------- warping


def _sample_maps(
    matrix: np.ndarray, mesh: np.ndarray | None, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Section-pixel coordinates sampled by every output pixel: T (x + D(x))."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    if mesh is not None:
        dense = _dense(mesh, shape)
        xs, ys = xs + dense[..., 0], ys + dense[..., 1]
    map_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    map_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return map_x.astype(np.float32), map_y.astype(np.float32)


def _warp_section(
    section: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, order: int
) -> np.ndarray:
    """Sample ``section`` at (map_x, map_y); outside -> 0; order 0 is exact for any dtype."""
    if order == 0:
        xi, yi = np.rint(map_x).astype(np.int64), np.rint(map_y).astype(np.int64)
        h, w = section.shape
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out = np.zeros(map_x.shape, section.dtype)
        out[inside] = section[yi[inside], xi[inside]]
        return out
    work = section.astype(np.float64 if section.dtype == np.float64 else np.float32)
    warped = cv2.remap(work, map_x, map_y, ORDERS[order], borderMode=cv2.BORDER_CONSTANT)
    return to_dtype(warped, section.dtype)


def apply_transforms(stack: np.ndarray, transforms: dict[str, Any], order: int = 1) -> np.ndarray:
    """Re-apply ``report["transforms"]`` from `align_stack` to a stack of the same shape.

    ``order`` 0 (nearest: exact for label volumes of any integer dtype), 1 (linear) or 3
    (cubic). Returns an array with the input's dtype.
    """
    if order not in ORDERS:
        raise VemvizError(f"interpolation order must be 0, 1 or 3, got {order}")
    if stack.ndim != 3:
        raise VemvizError(f"alignment needs a (z, y, x) stack, got {stack.ndim} dimensions")
    check_transforms_shape(transforms, stack.shape)
    out = np.empty_like(stack)
    for z in track(range(stack.shape[0]), "Warping sections"):
        out[z] = transform_section(stack[z], transforms, z, order)
    return out


def transform_section(
    section: np.ndarray, transforms: dict[str, Any], z: int, order: int = 1
) -> np.ndarray:
    """Section ``z`` (y, x) of a stack warped by its transform in ``transforms``."""
    return _warp_section(section, *_section_maps(transforms, z, section.shape), order)


def _section_maps(
    transforms: dict[str, Any], z: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`_sample_maps` of section ``z``'s matrix and mesh in ``transforms``."""
    meshes = transforms.get("displacements")
    mesh = None if not meshes or meshes[z] is None else np.asarray(meshes[z], dtype=np.float64)
    return _sample_maps(np.asarray(transforms["matrices"][z]), mesh, shape)


# --------------------------------------------------------------------------------- public


def section_mask(transforms: dict[str, Any] | None, z: int, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) bool: the output pixels of section ``z`` that sample inside the section (all of
    them if untransformed); one slice of `section_masks`."""
    if transforms is None:
        return np.ones(shape, bool)
    map_x, map_y = _section_maps(transforms, z, shape)
    return (map_x >= 0) & (map_x <= shape[1] - 1) & (map_y >= 0) & (map_y <= shape[0] - 1)


def section_masks(transforms: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """(z, y, x) bool for the aligned stack of ``shape``: True where it shows its own section,
    False on the padding (output pixels that sample outside the section, which
    `apply_transforms` sets to 0)."""
    check_transforms_shape(transforms, shape)
    n, height, width = shape
    return np.stack([section_mask(transforms, z, (height, width)) for z in range(n)])


def check_transforms_shape(transforms: dict[str, Any], shape: tuple[int, ...]) -> None:
    if list(shape) != list(transforms.get("shape", [])):
        raise VemvizError(
            f"the transforms were computed for shape {transforms.get('shape')}, not {list(shape)}"
        )


def _ncc_with_previous(
    transforms: dict[str, Any] | None, section: Callable[[int], np.ndarray], z: int
) -> float | None:
    """NCC of section z with z-1 over the pixels valid in both (None under 16 of them);
    ``section(z)``: section z, aligned by ``transforms`` if given."""
    image = section(z)
    mask = section_mask(transforms, z, image.shape) & section_mask(transforms, z - 1, image.shape)
    return ncc(image[mask], section(z - 1)[mask]) if mask.sum() >= 16 else None


def _section_figures(section: Callable[[int], np.ndarray], z: int) -> tuple[float, float | None]:
    """Section z's standard deviation, and its NCC with section z-1 (None for the first)."""
    return float(section(z).std()), _ncc_with_previous(None, section, z) if z else None


def _consecutive_ncc(nccs: dict[int, float | None], n: int, bad: list[int]) -> list[float | None]:
    """Per section z of ``n``, ``nccs[z]`` (with z-1); None for the first and next to a bad
    section."""
    return [None if z == 0 or z in bad or z - 1 in bad else nccs[z] for z in range(n)]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def align_stack(
    stack: np.ndarray, mode: str = "rigid", **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Align the sections of ``stack`` (z, y, x); returns (aligned stack, report): the report
    of `register_sections` (``mode`` and ``options`` are its), then `apply_transforms`."""
    if stack.ndim != 3:
        raise VemvizError(f"alignment needs a (z, y, x) stack, got {stack.ndim} dimensions")
    report = register_sections(SliceSource(stack), mode, **options)
    return apply_transforms(stack, report["transforms"], order=1), report


def register_sections(
    source: SliceSource,
    mode: str = "rigid",
    skip: Sequence[int] = (),
    neighbours: int = 2,
    detrend: bool = False,
    mesh_spacing: int = 32,
    stiffness: float = 0.05,
    smooth: float = 0.0,
    deformation_sigma: float = 3.0,
    run: Run | None = None,
) -> dict[str, Any]:
    """Register the sections of ``source``, read a few at a time (a stack on disk need not fit
    in memory): each section with its previous good neighbours, and for ``elastic`` and the
    NCCs after alignment, warped one at a time. Returns the report.

    Each pass over the sections is a `vemviz.slices.sweep`: in this process, or with ``run``
    (`vemviz.chunked.Runner.run`) as parallel tasks of one z chunk each; the report is the same.

    ``mode``: ``rigid`` (rotation + translation), ``affine``, or ``elastic`` (rigid plus a
    smooth per-section displacement mesh; ``mesh_spacing`` px, ``stiffness`` towards the rigid
    position). ``deformation_sigma``: the affine deformations and elastic meshes keep only
    their part that differs from the neighbouring sections (a local linear fit of that many
    sections along z is subtracted; 0 = off). ``skip``:
    section indices to treat as damaged.
    ``neighbours``: how many previous good sections each section is registered to.
    ``smooth`` > 0 (sections): keep the slow part of the trajectory (a Gaussian of that width
    along z), so that structure that really drifts through the stack is not straightened.
    The report holds ``transforms`` (``mode``, ``shape``, ``matrices``: per section a 2x3
    matrix mapping output (x, y) pixels to that section's pixels, ``displacements``: None or
    per section a (rows, cols, 2) mesh of (dx, dy) pixels; the input of `apply_transforms`),
    ``bad_sections`` (bridged), ``pairs`` (z, ref, ncc of each registration), ``sections``
    (per z: status, ``ncc_prev_before``/``after`` with section z-1) and the mean NCCs.
    """
    if mode not in MODES:
        raise VemvizError(f"unknown alignment mode {mode!r}; choose rigid, affine or elastic")
    shape = source.shape
    n = shape[0]
    if any(not 0 <= z < n for z in skip):
        raise VemvizError(f"skip lists sections outside 0..{n - 1}: {sorted(skip)}")
    if neighbours < 1:
        raise VemvizError("each section needs at least one neighbour to align to")
    figures = sweep(source, _section_figures, range(n), "Reading sections", run)
    bad = _bad_sections([figures[z][0] for z in range(n)], skip)
    good = [z for z in range(n) if z not in bad]
    if len(good) < 2:
        raise VemvizError("fewer than two usable (non-blank, non-skipped) sections to align")
    norm = _normaliser(shape[1:])
    pairs = _reference_pairs(good, neighbours)
    references = _references(pairs)
    registered = sweep(source, functools.partial(_register_section, references, mode == "affine"),
                       sorted(references), "Registering sections", run)  # fmt: skip
    warps, affine_warps, nccs = {}, {}, {}
    for z, k in pairs:
        warp, refined, nccs[(z, k)] = registered[z][k]
        warps[(z, k)] = (norm @ _as3(warp) @ np.linalg.inv(norm))[:2]
        if refined is not None:
            affine_warps[(z, k)] = (norm @ _as3(refined) @ np.linalg.inv(norm))[:2]
    weights = {pair: max(ncc, _MIN_WEIGHT) ** _WEIGHT_POWER for pair, ncc in nccs.items()}
    half_size = max(shape[1:]) / 2.0
    solved = _center_gauge(_robust_solve(good, pairs, warps, weights, True, half_size), True)
    if mode == "affine":
        affine = _robust_solve(good, pairs, affine_warps, weights, False, half_size)
        deformations = _deformations(solved, _center_gauge(affine, False), deformation_sigma)
    if smooth < 0:
        raise VemvizError(f"trajectory smoothing must be >= 0 sections, got {smooth}")
    if smooth > 0:
        solved = _smooth_trajectory(solved, smooth, True)
    if detrend:
        solved = _detrend(solved)
    if mode == "affine":
        solved = {z: (_as3(t) @ _as3(deformations[z]))[:2] for z, t in solved.items()}
    matrices = [_to_pixels(m, norm) for m in _fill_bad(solved, n, mode != "affine")]
    transforms: dict[str, Any] = {
        "mode": mode,
        "shape": list(shape),
        "matrices": [m.tolist() for m in matrices],
        "displacements": None,
    }
    if mode == "elastic":
        mesh = _mesh_shape(shape[1:], mesh_spacing)
        flows = sweep(source, functools.partial(_coarse_flows, references, mesh),
                      sorted(references), "Elastic flow", run,
                      _aligned_reader(transforms, neighbours + 1))  # fmt: skip
        meshes = _elastic_meshes(flows, good, pairs, mesh, stiffness)
        if deformation_sigma > 0:
            meshes = _high_pass(meshes, deformation_sigma)
        transforms["displacements"] = [
            meshes[z].tolist() if z in meshes else None for z in range(n)
        ]
    before = _consecutive_ncc({z: figures[z][1] for z in range(n)}, n, bad)
    scored = [z for z in range(1, n) if z not in bad and z - 1 not in bad]
    after = _consecutive_ncc(
        sweep(source, functools.partial(_ncc_with_previous, transforms), scored,
              "Scoring the alignment", run, _aligned_reader(transforms, 2)),
        n, bad,
    )  # fmt: skip
    return {
        "mode": mode,
        "neighbours": neighbours,
        "detrend": detrend,
        "smooth_sections": smooth,
        "bad_sections": bad,
        "pairs": [{"z": z, "ref": k, "ncc": nccs[(z, k)]} for z, k in pairs],
        "sections": [
            {
                "z": z,
                "status": "bridged" if z in bad else "aligned",
                "ncc_prev_before": before[z],
                "ncc_prev_after": after[z],
            }
            for z in range(n)
        ],
        "mean_ncc_before": _mean(before),
        "mean_ncc_after": _mean(after),
        "transforms": transforms,
    }


def _aligned_reader(
    transforms: dict[str, Any], kept: int
) -> Callable[[SliceSource], Callable[[int], np.ndarray]]:
    """A `vemviz.slices.sweep` reader: source -> (z -> section z warped by ``transforms``,
    linear), the last ``kept`` of them cached."""
    return functools.partial(_aligned_sections, transforms=transforms, kept=kept)


def _aligned_sections(
    source: SliceSource, transforms: dict[str, Any], kept: int
) -> Callable[[int], np.ndarray]:
    @functools.lru_cache(maxsize=kept)
    def aligned(z: int) -> np.ndarray:
        return transform_section(source.image(z), transforms, z, order=1)

    return aligned


def _references(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    """Section -> the sections it is registered to."""
    references: dict[int, list[int]] = {}
    for z, k in pairs:
        references.setdefault(z, []).append(k)
    return references


def _register_section(
    references: dict[int, list[int]], affine: bool, section: Callable[[int], np.ndarray], z: int
) -> dict[int, tuple[np.ndarray, np.ndarray | None, float]]:
    """`_register` of section z to each of its references."""
    return {k: _register(section(z), section(k), affine) for k in references[z]}
