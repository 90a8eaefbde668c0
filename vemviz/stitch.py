"""Stitch a grid of overlapping 2D EM tiles into one image.

Method. Tiles ``*_ROW_COL`` (1-based) are laid out on a regular grid whose neighbours overlap
by about ``overlap_hint`` of the tile size (the *grid prior*). Each horizontal and vertical
neighbour pair is registered inside the strips where they are expected to overlap (twice
the hinted overlap, so that a loose hint still finds it):

1. SIFT keypoints (``cv2.SIFT_create``) in both strips, nearest-neighbour matching with Lowe's
   ratio test, and RANSAC (``cv2.estimateAffinePartial2D``) to reject wrong matches. The
   inliers are refitted with a rigid (rotation + translation, no scale) least-squares fit.
2. When too few features survive, phase correlation of the two strips gives a translation.

A pair estimate is kept only if the normalised cross-correlation (NCC) of the two tiles in
their overlap is at least ``min_ncc``; otherwise the pair is reported as unmatched.

All tile poses (rotation angle and translation, tile (1,1) fixed at the origin) are then
solved jointly by weighted linear least squares over all kept pairs, first the angles
(``theta_b - theta_a = phi_ab``), then, with the angles known, the translations (the matched
points of both tiles must land on the same panorama point). Weights are the inlier counts, so
a well-textured overlap counts more than a poor one, and because every pair constrains the
solution at once, errors do not accumulate along a row the way chaining pairwise offsets
would. A weak prior (weight ``1e-3``) towards the grid layout keeps the system well posed:
a tile whose overlaps all failed is placed from its neighbours' poses plus the nominal grid
step. If no pair matches at all the tiles do not overlap (or the hint is wrong) and stitching
stops with an error instead of returning a meaningless mosaic.

The panorama is rendered by warping every tile (bilinear) and blending overlaps with
feathering: each tile pixel is weighted by its distance to the tile border, so seams fade
over the whole overlap instead of showing a step. Pixels covered by no tile are 0. The output
has the tiles' dtype (integers are rounded and clipped to the dtype's range).

Coordinates are ``(x, y)`` pixels; a pose is a 2x3 matrix mapping tile pixels to panorama
pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from vemviz.align import ncc
from vemviz.errors import VemvizError
from vemviz.flow import to_dtype, to_uint8_pair
from vemviz.progress import track

Tile = tuple[int, int]

TILE_SUFFIXES = (".png", ".tif", ".tiff")
_TILE_NAME = re.compile(r"_(\d+)_(\d+)$")
_PRIOR_WEIGHT = 1e-3
_STRIP_FACTOR = 2.0
_MAX_ANGLE_RAD = math.radians(5.0)
_MAX_SCALE_ERROR = 0.03
_MIN_OVERLAP_PIXELS = 64


# ----------------------------------------------------------------------------- reading tiles


def _tile_name(tile: Tile) -> str:
    return f"{tile[0]}_{tile[1]}"


def _to_gray(image: np.ndarray, path: Path, bgr: bool) -> np.ndarray:
    """Return a 2D image; RGB(A) is converted to luma in the input dtype."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3][..., ::-1] if bgr else image[..., :3]
        gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if np.issubdtype(image.dtype, np.integer):
            gray = np.rint(gray)
        return gray.astype(image.dtype)
    raise VemvizError(
        f"{path.name} is not a 2D grayscale or RGB image (shape {image.shape}); "
        "export each tile as a single 2D image"
    )


def _read_tile(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError("unreadable")
            return _to_gray(image, path, bgr=True)
        return _to_gray(np.asarray(tifffile.imread(path)), path, bgr=False)
    except VemvizError:
        raise
    except Exception as exc:  # any decoder failure means a corrupt or foreign file
        raise VemvizError(f"cannot read tile {path}: the file is corrupt or not an image") from exc


def _check_complete(tiles: Iterable[Tile], grid: tuple[int, int]) -> None:
    present = set(tiles)
    for tile in present:
        if not (1 <= tile[0] <= grid[0] and 1 <= tile[1] <= grid[1]):
            raise VemvizError(
                f"tile {_tile_name(tile)} lies outside the {grid[0]}x{grid[1]} grid "
                "(rows and columns are numbered from 1)"
            )
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            if (row, col) not in present:
                raise VemvizError(
                    f"tile row {row} column {col} is missing (expected a file named "
                    f"*_{row}_{col}.png/.tif) in the {grid[0]}x{grid[1]} grid"
                )


def _grid_of(tiles: Iterable[Tile]) -> tuple[int, int]:
    keys = list(tiles)
    return max(r for r, _ in keys), max(c for _, c in keys)


def read_tile_grid(
    tile_dir: Path, grid: tuple[int, int] | None = None
) -> dict[tuple[int, int], np.ndarray]:
    """Read tiles named ``*_ROW_COL.png/.tif/.tiff`` (1-based) from ``tile_dir``.

    Returns ``{(row, col): 2D array}``. RGB tiles are converted to grayscale. Raises
    `VemvizError` for a missing directory, no tiles, duplicate or missing positions, a grid
    that differs from ``grid`` (rows, cols), mixed dtypes or shapes, or an unreadable file.
    """
    tile_dir = Path(tile_dir)
    if not tile_dir.is_dir():
        raise VemvizError(f"tile directory {tile_dir} does not exist")
    paths: dict[Tile, Path] = {}
    for path in sorted(tile_dir.iterdir()):
        match = _TILE_NAME.search(path.stem)
        if path.suffix.lower() not in TILE_SUFFIXES or match is None:
            continue
        tile = (int(match.group(1)), int(match.group(2)))
        if tile in paths:
            raise VemvizError(
                f"two files claim tile {_tile_name(tile)}: {paths[tile].name}, {path.name}"
            )
        paths[tile] = path
    if not paths:
        raise VemvizError(f"no tiles named *_ROW_COL.png/.tif/.tiff found in {tile_dir}")
    found = _grid_of(paths)
    if grid is not None and (grid[0] < found[0] or grid[1] < found[1]):
        raise VemvizError(
            f"the tiles form a {found[0]}x{found[1]} grid, not the {grid[0]}x{grid[1]} "
            "given with --grid"
        )
    _check_complete(paths, grid or found)
    tiles = {tile: _read_tile(path) for tile, path in track(paths.items(), "Reading tiles")}
    first = tiles[min(tiles)]
    for tile, image in tiles.items():
        if image.dtype != first.dtype or image.shape != first.shape:
            raise VemvizError(
                f"tile {paths[tile].name} is {image.dtype} {image.shape} but tile "
                f"{paths[min(tiles)].name} is {first.dtype} {first.shape}; all tiles must match"
            )
    return tiles


# ----------------------------------------------------------------------- pair registration


@dataclass
class _Pair:
    """Registration of neighbour ``b`` against ``a`` in their overlap."""

    a: Tile
    b: Tile
    direction: str
    method: str = "none"
    matches: int = 0
    inliers: int = 0
    weight: float = 0.0
    angle: float = 0.0
    pts_a: np.ndarray | None = None
    pts_b: np.ndarray | None = None

    @property
    def name(self) -> str:
        return f"{_tile_name(self.a)}-{_tile_name(self.b)}"


def _rigid(angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer(inner(p))``."""
    result = outer[:, :2] @ inner
    result[:, 2] += outer[:, 2]
    return result


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _fit_rigid(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + translation (no scale) mapping ``src`` points onto ``dst``."""
    cs, cd = src.mean(0), dst.mean(0)
    u, v = src - cs, dst - cd
    angle = math.atan2(float(np.sum(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])), float(np.sum(u * v)))
    rot = _rigid(angle, 0.0, 0.0)[:, :2]
    t = cd - rot @ cs
    return _rigid(angle, float(t[0]), float(t[1]))


def _strip_width(shape: tuple[int, int], direction: str, overlap_hint: float) -> int:
    extent = shape[1] if direction == "horizontal" else shape[0]
    return min(extent, math.ceil(_STRIP_FACTOR * overlap_hint * extent))


def _strip_windows(shape: tuple[int, int], direction: str, width: int) -> tuple[tuple, tuple]:
    """Slices of the expected overlap in tile a (right/bottom) and tile b (left/top)."""
    h, w = shape
    if direction == "horizontal":
        return (slice(None), slice(w - width, w)), (slice(None), slice(0, width))
    return (slice(h - width, h), slice(None)), (slice(0, width), slice(None))


def _window_origin(window: tuple) -> np.ndarray:
    return np.array([window[1].start or 0, window[0].start or 0], dtype=np.float64)


def _sift_pair(
    strip_a: np.ndarray, strip_b: np.ndarray, origin_a: np.ndarray, origin_b: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    """Ratio-test matches and the RANSAC similarity inlier mask (points in tile coords)."""
    gray_a, gray_b = to_uint8_pair(strip_a, strip_b)
    sift = cv2.SIFT_create()
    kp_a, desc_a = sift.detectAndCompute(gray_a, None)
    kp_b, desc_b = sift.detectAndCompute(gray_b, None)
    empty = np.zeros((0, 2))
    if desc_a is None or desc_b is None or len(kp_a) < 2 or len(kp_b) < 2:
        return 0, empty, empty, None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_b, desc_a, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) < 3:
        return len(good), empty, empty, None
    pts_a = np.array([kp_a[m.trainIdx].pt for m in good]) + origin_a
    pts_b = np.array([kp_b[m.queryIdx].pt for m in good]) + origin_b
    model, mask = cv2.estimateAffinePartial2D(
        pts_b, pts_a, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=4000
    )
    if model is None:
        return len(good), pts_a, pts_b, None
    scale = math.hypot(model[0, 0], model[1, 0])
    angle = math.atan2(model[1, 0], model[0, 0])
    if abs(scale - 1) > _MAX_SCALE_ERROR or abs(angle) > _MAX_ANGLE_RAD:
        return len(good), pts_a, pts_b, None
    return len(good), pts_a, pts_b, mask.ravel().astype(bool)


def _phase_pair(
    strip_a: np.ndarray, strip_b: np.ndarray, origin_a: np.ndarray, origin_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Translation from phase correlation, as the corners of the implied overlap."""
    fa, fb = strip_a.astype(np.float32), strip_b.astype(np.float32)
    window = cv2.createHanningWindow(fa.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(fb, fa, window)
    # strip_a(p) ~ strip_b(p - (dx, dy)): a point p in b's strip is p + (dx, dy) in a's strip.
    h, w = fa.shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    return corners + origin_a + (dx, dy), corners + origin_b


def _overlap_ncc(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pose_a: np.ndarray,
    pose_b: np.ndarray,
    window_a: tuple,
) -> float | None:
    """NCC of a and b where they overlap inside ``window_a`` of a, given both tile poses."""
    origin = _window_origin(window_a)
    crop = image_a[window_a].astype(np.float32)
    # a-window pixels -> panorama -> b pixels
    inv_b = cv2.invertAffineTransform(pose_b)
    to_b = _compose(inv_b, _compose(pose_a, _rigid(0.0, *origin)))
    size = (crop.shape[1], crop.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(image_b.astype(np.float32), to_b, size, flags=flags)
    ones = np.ones(image_b.shape, np.float32)
    valid = cv2.warpAffine(ones, to_b, size, flags=flags) > 0.999
    if valid.sum() < _MIN_OVERLAP_PIXELS:
        return None
    return ncc(crop[valid], warped[valid])


def _register_pair(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pair: _Pair,
    width: int,
    min_inliers: int,
    min_ncc: float,
) -> _Pair:
    win_a, win_b = _strip_windows(image_a.shape, pair.direction, width)
    origin_a, origin_b = _window_origin(win_a), _window_origin(win_b)
    strip_a, strip_b = image_a[win_a], image_b[win_b]
    matches, pts_a, pts_b, inliers = _sift_pair(strip_a, strip_b, origin_a, origin_b)
    pair.matches = matches
    if inliers is not None and inliers.sum() >= min_inliers:
        pair.method, pair.inliers = "sift", int(inliers.sum())
        pts_a, pts_b = pts_a[inliers], pts_b[inliers]
    else:
        pair.method, pair.inliers = "phase", 0
        pts_a, pts_b = _phase_pair(strip_a, strip_b, origin_a, origin_b)
    b_to_a = _fit_rigid(pts_b, pts_a)
    ncc = _overlap_ncc(image_a, image_b, _rigid(0.0, 0.0, 0.0), b_to_a, win_a)
    if ncc is None or ncc < min_ncc:
        pair.method, pair.inliers = "none", 0
        return pair
    # a phase-correlation pair counts as much as the weakest acceptable feature match
    pair.weight = float(max(pair.inliers, min_inliers))
    pair.angle = math.atan2(b_to_a[1, 0], b_to_a[0, 0])
    pair.pts_a, pair.pts_b = pts_a, pts_b
    return pair


# ------------------------------------------------------------------------------ global solve


def _neighbour_pairs(grid: tuple[int, int]) -> list[_Pair]:
    pairs = []
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            if col < grid[1]:
                pairs.append(_Pair((row, col), (row, col + 1), "horizontal"))
            if row < grid[0]:
                pairs.append(_Pair((row, col), (row + 1, col), "vertical"))
    return pairs


def _weighted_lstsq(rows: list[tuple[dict[int, float], float, float]], n: int) -> np.ndarray:
    """Solve sum_k w_k (sum_i coef_ki x_i - rhs_k)^2 -> min; rows are (coefs, rhs, weight)."""
    if n == 0:
        return np.zeros(0)
    matrix = np.zeros((len(rows), n))
    rhs = np.zeros(len(rows))
    for k, (coefs, value, weight) in enumerate(rows):
        root = math.sqrt(weight)
        for index, coef in coefs.items():
            matrix[k, index] = coef * root
        rhs[k] = value * root
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def _solve_poses(
    tiles: list[Tile], pairs: list[_Pair], prior: dict[Tile, np.ndarray]
) -> dict[Tile, np.ndarray]:
    """Joint weighted least squares of all tile angles, then translations; tiles[0] fixed."""
    index = {tile: i - 1 for i, tile in enumerate(tiles)}  # tiles[0] -> -1 (fixed, dropped)
    n = len(tiles) - 1

    def diff(a: Tile, b: Tile) -> dict[int, float]:
        coefs = {index[b]: 1.0, index[a]: -1.0}
        return {i: c for i, c in coefs.items() if i >= 0}

    matched = [p for p in pairs if p.method != "none"]
    angle_rows = [(diff(p.a, p.b), p.angle, p.weight) for p in matched]
    angle_rows += [(diff(p.a, p.b), 0.0, _PRIOR_WEIGHT) for p in pairs]
    angles = np.concatenate([[0.0], _weighted_lstsq(angle_rows, n)])
    rot = {tile: _rigid(angles[index[tile] + 1], 0.0, 0.0)[:, :2] for tile in tiles}

    offsets = []
    for axis in (0, 1):
        rows = []
        for p in matched:
            # R_a p_a + t_a = R_b p_b + t_b  =>  t_b - t_a = mean(R_a p_a - R_b p_b)
            target = (p.pts_a @ rot[p.a].T - p.pts_b @ rot[p.b].T).mean(0)
            rows.append((diff(p.a, p.b), float(target[axis]), p.weight))
        rows += [
            (diff(p.a, p.b), float(prior[p.b][axis] - prior[p.a][axis]), _PRIOR_WEIGHT)
            for p in pairs
        ]
        offsets.append(np.concatenate([[0.0], _weighted_lstsq(rows, n)]))
    return {
        tile: _rigid(angles[i + 1], offsets[0][i + 1], offsets[1][i + 1])
        for tile, i in index.items()
    }


def _connected(tiles: list[Tile], pairs: list[_Pair]) -> set[Tile]:
    """Tiles linked to tiles[0] through matched pairs."""
    reached, frontier = {tiles[0]}, [tiles[0]]
    links = [(p.a, p.b) for p in pairs if p.method != "none"]
    while frontier:
        tile = frontier.pop()
        for a, b in links:
            for here, there in ((a, b), (b, a)):
                if here == tile and there not in reached:
                    reached.add(there)
                    frontier.append(there)
    return reached


def _residual(pair: _Pair, poses: dict[Tile, np.ndarray]) -> float:
    gap = _apply(poses[pair.a], pair.pts_a) - _apply(poses[pair.b], pair.pts_b)
    return float(np.sqrt(np.mean(np.sum(gap**2, axis=1))))


# ----------------------------------------------------------------------------------- render


def _feather(shape: tuple[int, int]) -> np.ndarray:
    """Weight = distance (in pixels, >= 1) to the nearest tile border."""
    h, w = shape
    ys = np.minimum(np.arange(1, h + 1), np.arange(h, 0, -1)).astype(np.float32)
    xs = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float32)
    return np.minimum(ys[:, None], xs[None, :])


def _render(
    tiles: dict[Tile, np.ndarray], poses: dict[Tile, np.ndarray]
) -> tuple[np.ndarray, dict[Tile, np.ndarray]]:
    """Feather-blend all tiles; returns the panorama and poses shifted into its frame."""
    h, w = next(iter(tiles.values())).shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    placed = np.vstack([_apply(pose, corners) for pose in poses.values()])
    shift = -np.floor(placed.min(0) + 1e-6)
    poses = {
        tile: pose + np.hstack([np.zeros((2, 2)), shift[:, None]]) for tile, pose in poses.items()
    }
    size = np.floor(placed.max(0) + shift + 1e-6).astype(int) + 1
    total = np.zeros((size[1], size[0]), np.float32)
    weight = np.zeros_like(total)
    feather = _feather((h, w))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for tile, image in track(tiles.items(), "Blending tiles"):
        box = _apply(poses[tile], corners)
        x0, y0 = np.maximum(np.floor(box.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(box.max(0)).astype(int) + 1, size)
        to_tile = _compose(cv2.invertAffineTransform(poses[tile]), _rigid(0.0, x0, y0))
        out = (int(x1 - x0), int(y1 - y0))
        weighted = image.astype(np.float32) * feather
        total[y0:y1, x0:x1] += cv2.warpAffine(weighted, to_tile, out, flags=flags)
        weight[y0:y1, x0:x1] += cv2.warpAffine(feather, to_tile, out, flags=flags)
    covered = weight > 1e-6
    total[covered] /= weight[covered]
    return to_dtype(total, next(iter(tiles.values())).dtype), poses


# ------------------------------------------------------------------------------------ public


def stitch_tiles(
    tiles: dict[tuple[int, int], np.ndarray],
    overlap_hint: float = 0.1,
    min_inliers: int = 12,
    min_ncc: float = 0.3,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stitch a complete grid of same-shape 2D tiles ``{(row, col): image}`` (1-based).

    ``overlap_hint`` is the expected overlap as a fraction of the tile width/height (the
    search looks at twice that). A pair needs ``min_inliers`` RANSAC inliers to count as a
    feature match (else phase correlation is tried) and an overlap NCC of at least
    ``min_ncc`` to be used at all. Returns the panorama (tile dtype) and a report dict:
    ``overlaps`` (per neighbour pair: method sift/phase/none, matches, inliers, residual_px
    after the global solve, ncc_before on the grid prior and ncc_after), ``unmatched_pairs``,
    ``placed_by_grid_prior``, ``mean_ncc_before``/``after`` and ``tiles`` (per ``"ROW_COL"``:
    x, y of the tile's pixel (0, 0) in the panorama, rotation_deg, 2x3 ``matrix`` tile ->
    panorama pixels).
    """
    if not tiles:
        raise VemvizError("no tiles to stitch")
    if not 0 < overlap_hint < 0.5:
        raise VemvizError(f"overlap hint must be between 0 and 0.5, got {overlap_hint}")
    grid = _grid_of(tiles)
    _check_complete(tiles, grid)
    keys = sorted(tiles)
    shape = tiles[keys[0]].shape
    if any(tiles[k].ndim != 2 or tiles[k].shape != shape for k in keys):
        raise VemvizError("all tiles must be 2D images of the same shape")
    h, w = shape
    step = (w - round(overlap_hint * w), h - round(overlap_hint * h))
    prior = {(r, c): np.array([(c - 1) * step[0], (r - 1) * step[1]], float) for r, c in keys}
    pairs = _neighbour_pairs(grid)
    for pair in track(pairs, "Matching tile overlaps"):
        width = _strip_width(shape, pair.direction, overlap_hint)
        _register_pair(tiles[pair.a], tiles[pair.b], pair, width, min_inliers, min_ncc)
    if pairs and all(p.method == "none" for p in pairs):
        raise VemvizError(
            "no neighbouring tiles overlap: no pair matched by features or phase correlation; "
            "check the tile order and the overlap hint"
        )
    poses = _solve_poses(keys, pairs, prior)
    prior_poses = {tile: _rigid(0.0, *prior[tile]) for tile in keys}
    overlaps = []
    for p in pairs:
        width = _strip_width(shape, p.direction, overlap_hint)
        window = _strip_windows(shape, p.direction, width)[0]
        matched = p.method != "none"
        overlaps.append(
            {
                "pair": p.name,
                "direction": p.direction,
                "method": p.method,
                "matches": p.matches,
                "inliers": p.inliers if p.method == "sift" else 0,
                "residual_px": _residual(p, poses) if matched else None,
                "ncc_before": _overlap_ncc(
                    tiles[p.a], tiles[p.b], prior_poses[p.a], prior_poses[p.b], window
                ),
                "ncc_after": _overlap_ncc(tiles[p.a], tiles[p.b], poses[p.a], poses[p.b], window),
            }
        )
    panorama, poses = _render(tiles, poses)
    linked = _connected(keys, pairs)
    report = {
        "method": "SIFT+RANSAC pairwise (phase-correlation fallback), global least squares, "
        "feathered blending",
        "grid": list(grid),
        "tile_shape": [h, w],
        "overlap_hint": overlap_hint,
        "panorama_shape": list(panorama.shape),
        "overlaps": overlaps,
        "unmatched_pairs": [p.name for p in pairs if p.method == "none"],
        "placed_by_grid_prior": [_tile_name(t) for t in keys if t not in linked],
        "mean_ncc_before": _mean([o["ncc_before"] for o in overlaps]),
        "mean_ncc_after": _mean([o["ncc_after"] for o in overlaps]),
        "tiles": {
            _tile_name(t): {
                "x": float(poses[t][0, 2]),
                "y": float(poses[t][1, 2]),
                "rotation_deg": math.degrees(math.atan2(poses[t][1, 0], poses[t][0, 0])),
                "matrix": poses[t].tolist(),
            }
            for t in keys
        },
    }
    return panorama, report


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
