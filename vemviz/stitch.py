"""Stitch overlapping 2D EM tiles of one section into one seamless image.

Layout. Tiles come either as a grid (files ``*_ROW_COL``, 1-based, neighbours overlapping by
about ``overlap_hint`` of the tile size) or as a CSV list of files with approximate ``x, y``
positions (`read_tile_list`). Either way every tile has a *prior* position; two tiles whose
prior boxes share an edge-long overlap (at least half a tile side) are a neighbour pair.

1. Pair registration. Each pair is matched inside the prior overlap widened by a search margin
   (``search`` of the tile size, by default the overlap hint, so that a loose hint still finds
   the overlap): SIFT keypoints (``cv2.SIFT_create``), nearest-neighbour matching with Lowe's
   ratio test and RANSAC (``cv2.estimateAffinePartial2D``); the inliers are refitted with a
   rigid (rotation + translation) least-squares fit. With too few inliers, phase correlation of
   the two windows gives a translation. A pair estimate is kept only if the normalised
   cross-correlation (NCC) of the two tiles in their overlap is at least ``min_ncc``.
2. Global rigid solve. All tile poses (angle and translation, the first tile fixed) are solved
   jointly by weighted linear least squares over all kept pairs, first the angles, then the
   translations (matched points of both tiles must land on the same panorama point), weighted
   by the inlier counts. Every pair constrains the solution at once, so errors do not
   accumulate along a row. A weak prior (weight ``1e-3``) towards the layout keeps the system
   well posed: a tile whose overlaps all failed (no texture, too little overlap) is placed from
   its neighbours' poses plus the prior offsets, and is named in the report's ``warnings``. If
   no pair matches at all the tiles do not overlap and stitching stops with an error.
3. Local elastic correction. Real tiles are distorted (lens, charging, section deformation),
   so a rigid pose cannot make both sides of an overlap agree everywhere. Each tile carries a
   displacement mesh ``V_t`` (panorama pixels, nodes every ``mesh_spacing`` tile pixels,
   bilinear between nodes) and one sparse least-squares system over all meshes asks
   ``V_b(q) - V_a(q) = f(q)`` wherever the misfit ``f`` between tiles a and b is measured at a
   panorama point q, plus a bending term (second differences of neighbouring nodes vanish,
   weight ``smoothness``) and a tiny pull to zero for the gauge. The misfit is thereby split
   between both tiles and spread smoothly into their interiors instead of being forced into a
   seam, and where an overlap has no measurement the meshes continue the trend of their
   neighbourhood. The misfit is measured coarse to fine: first by all feature matches of the
   pair within ``search_px`` of its rigid estimate (they find shifts of many pixels, also in
   thin overlaps), then, ``iterations`` times, by dense optical flow (Farneback,
   `vemviz.flow.dense_flow`, both ways) between the two tiles rendered with the current
   meshes; flow samples whose forward and backward flows disagree by more than a pixel are
   dropped. Each solve is repeated twice without the samples whose residual exceeds three
   times the median (a match on the wrong structure).
4. Blending. Every tile is resampled (bilinear) at ``pose^-1(q) + R^T V_t`` and overlaps are
   feathered: each tile pixel is weighted by its distance to the tile border, so seams fade
   over the whole overlap. Pixels covered by no tile are 0. The output keeps the tiles' dtype.

Coordinates are ``(x, y)`` pixels; a pose is a 2x3 matrix mapping tile pixels to panorama
pixels.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import tifffile
from scipy.ndimage import map_coordinates

from vemviz.align import ncc
from vemviz.errors import VemvizError
from vemviz.flow import consistency_error, dense_flow, to_dtype, to_uint8_pair
from vemviz.progress import track

Tile = Hashable  # (row, col) for grids, the file stem for CSV tile lists

TILE_SUFFIXES = (".png", ".tif", ".tiff")
_TILE_NAME = re.compile(r"_(\d+)_(\d+)$")
_PRIOR_WEIGHT = 1e-3
_MAX_ANGLE_RAD = math.radians(5.0)
_MAX_SCALE_ERROR = 0.03
_MIN_OVERLAP_PIXELS = 64
_FLOW_CONSISTENCY_PX = 1.0
_FLOW_BORDER_PX = 8
_OUTLIER_FACTOR = 3.0
_OUTLIER_MIN_PX = 1.0
_MESH_GAUGE_WEIGHT = 1e-4


# ----------------------------------------------------------------------------- reading tiles


def tile_name(tile: Tile) -> str:
    """``"ROW_COL"`` for grid tiles, the name itself for listed tiles."""
    if isinstance(tile, tuple):
        return f"{tile[0]}_{tile[1]}"
    return str(tile)


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


def _check_complete(tiles: Iterable[tuple[int, int]], grid: tuple[int, int]) -> None:
    present = set(tiles)
    for tile in present:
        if not (1 <= tile[0] <= grid[0] and 1 <= tile[1] <= grid[1]):
            raise VemvizError(
                f"tile {tile_name(tile)} lies outside the {grid[0]}x{grid[1]} grid "
                "(rows and columns are numbered from 1)"
            )
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            if (row, col) not in present:
                raise VemvizError(
                    f"tile row {row} column {col} is missing (expected a file named "
                    f"*_{row}_{col}.png/.tif) in the {grid[0]}x{grid[1]} grid"
                )


def _grid_of(tiles: Iterable[tuple[int, int]]) -> tuple[int, int]:
    keys = list(tiles)
    return max(r for r, _ in keys), max(c for _, c in keys)


def _read_all(paths: dict[Tile, Path]) -> dict[Tile, np.ndarray]:
    tiles = {tile: _read_tile(path) for tile, path in track(paths.items(), "Reading tiles")}
    first = min(tiles, key=str)
    for tile, image in tiles.items():
        if image.dtype != tiles[first].dtype or image.shape != tiles[first].shape:
            raise VemvizError(
                f"tile {paths[tile].name} is {image.dtype} {image.shape} but tile "
                f"{paths[first].name} is {tiles[first].dtype} {tiles[first].shape}; "
                "all tiles must match"
            )
    return tiles


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
    paths: dict[tuple[int, int], Path] = {}
    for path in sorted(tile_dir.iterdir()):
        match = _TILE_NAME.search(path.stem)
        if path.suffix.lower() not in TILE_SUFFIXES or match is None:
            continue
        tile = (int(match.group(1)), int(match.group(2)))
        if tile in paths:
            raise VemvizError(
                f"two files claim tile {tile_name(tile)}: {paths[tile].name}, {path.name}"
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
    return _read_all(paths)  # type: ignore[arg-type,return-value]


def read_tile_list(csv_path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a CSV tile list with columns ``file, x, y`` (a header row is allowed).

    ``file`` is relative to the CSV's folder; ``x, y`` is the approximate panorama position of
    the tile's top-left pixel. Returns ``({name: image}, {name: (x, y)})`` keyed by file stem.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise VemvizError(f"tile list {csv_path} does not exist")
    paths: dict[str, Path] = {}
    positions: dict[str, np.ndarray] = {}
    with csv_path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if len(cells) < 3:
                raise VemvizError(f"{csv_path.name} line {number}: expected file,x,y")
            try:
                position = np.array([float(cells[1]), float(cells[2])])
            except ValueError as exc:
                if number == 1:
                    continue  # header row
                raise VemvizError(
                    f"{csv_path.name} line {number}: x and y must be numbers, got {cells[1:3]}"
                ) from exc
            path = csv_path.parent / cells[0]
            if path.stem in paths:
                raise VemvizError(f"{csv_path.name} lists tile {path.stem} twice")
            if not path.is_file():
                raise VemvizError(f"{csv_path.name} line {number}: tile {path} does not exist")
            paths[path.stem], positions[path.stem] = path, position
    if not paths:
        raise VemvizError(f"{csv_path} lists no tiles (expected lines file,x,y)")
    return _read_all(paths), positions  # type: ignore[arg-type,return-value]


# ----------------------------------------------------------------------------- geometry


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


def _corners(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)


def _common_box(pose_a: np.ndarray, pose_b: np.ndarray, shape: tuple[int, int]) -> Box | None:
    """Integer panorama box where the bounding boxes of both placed tiles intersect."""
    boxes = [_apply(pose, _corners(shape)) for pose in (pose_a, pose_b)]
    x0 = math.ceil(max(b[:, 0].min() for b in boxes))
    y0 = math.ceil(max(b[:, 1].min() for b in boxes))
    x1 = math.floor(min(b[:, 0].max() for b in boxes)) + 1
    y1 = math.floor(min(b[:, 1].max() for b in boxes)) + 1
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _node_grid(shape: tuple[int, int], spacing: int) -> tuple[int, int]:
    h, w = shape
    return math.ceil((h - 1) / spacing) + 1, math.ceil((w - 1) / spacing) + 1


def _node_coords(
    px: np.ndarray, py: np.ndarray, shape: tuple[int, int], nodes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tile pixel coordinates as fractional mesh-node indices (nodes span the tile)."""
    h, w = shape
    return px * ((nodes[1] - 1) / (w - 1)), py * ((nodes[0] - 1) / (h - 1))


def _tile_maps(
    pose: np.ndarray, mesh: np.ndarray | None, shape: tuple[int, int], box: Box
) -> tuple[np.ndarray, np.ndarray]:
    """Tile pixel coordinates sampled by the panorama pixels of ``box``.

    ``pose^-1(q) + R^T V(pose^-1(q))``, with ``V`` the tile's displacement mesh (panorama
    pixels, bilinear between nodes; None = rigid only).
    """
    x0, y0, x1, y1 = box
    qy, qx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inv = cv2.invertAffineTransform(pose)
    px = inv[0, 0] * qx + inv[0, 1] * qy + inv[0, 2]
    py = inv[1, 0] * qx + inv[1, 1] * qy + inv[1, 2]
    if mesh is not None:
        nx, ny = _node_coords(px, py, shape, mesh.shape[:2])
        v = cv2.remap(
            mesh.astype(np.float32),
            nx.astype(np.float32),
            ny.astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        px = px + inv[0, 0] * v[..., 0] + inv[0, 1] * v[..., 1]
        py = py + inv[1, 0] * v[..., 0] + inv[1, 1] * v[..., 1]
    return px.astype(np.float32), py.astype(np.float32)


def tile_to_panorama(
    points: np.ndarray, matrix: np.ndarray, mesh: np.ndarray | None, shape: tuple[int, int]
) -> np.ndarray:
    """Panorama (x, y) of tile pixels ``points`` (N, 2), given a tile's report entry.

    Inverts the rendering map ``p = pose^-1(q) + R^T V(pose^-1(q))`` by fixed-point
    iteration (the mesh is smooth and small, so three steps reach far below 0.01 px).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    q = _apply(matrix, points)
    if mesh is None:
        return q
    mesh = np.asarray(mesh, dtype=np.float64)
    inv = cv2.invertAffineTransform(matrix)
    for _ in range(4):
        m = _apply(inv, q)
        nx, ny = _node_coords(m[:, 0], m[:, 1], shape, mesh.shape[:2])
        v = np.column_stack(
            [map_coordinates(mesh[..., c], [ny, nx], order=1, mode="nearest") for c in (0, 1)]
        )
        sampled = m + v @ inv[:, :2].T
        q = q - (sampled - points) @ matrix[:, :2].T
    return q


def _sample(
    image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], cubic: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (or bicubic) samples (float32) at ``maps`` and the mask of samples inside."""
    h, w = image.shape
    map_x, map_y = maps
    order = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    values = cv2.remap(
        image.astype(np.float32), map_x, map_y, order, borderMode=cv2.BORDER_REPLICATE
    )
    valid = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return values, valid


def _overlap_samples(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pose_a: np.ndarray,
    pose_b: np.ndarray,
    mesh_a: np.ndarray | None,
    mesh_b: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Box] | None:
    """Both tiles rendered over their common panorama box: values a, b, the mask where both
    are valid, and the box (None without enough common pixels)."""
    box = _common_box(pose_a, pose_b, image_a.shape)
    if box is None:
        return None
    a, valid_a = _sample(image_a, _tile_maps(pose_a, mesh_a, image_a.shape, box))
    b, valid_b = _sample(image_b, _tile_maps(pose_b, mesh_b, image_b.shape, box))
    valid = valid_a & valid_b
    if valid.sum() < _MIN_OVERLAP_PIXELS:
        return None
    return a, b, valid, box


def _overlap_ncc(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pose_a: np.ndarray,
    pose_b: np.ndarray,
    mesh_a: np.ndarray | None = None,
    mesh_b: np.ndarray | None = None,
) -> float | None:
    """NCC of both tiles over the panorama pixels that both cover (None if too few)."""
    overlap = _overlap_samples(image_a, image_b, pose_a, pose_b, mesh_a, mesh_b)
    if overlap is None:
        return None
    a, b, valid, _ = overlap
    return ncc(a[valid], b[valid])


# ----------------------------------------------------------------------- pair registration


@dataclass
class _Pair:
    """Registration of neighbour ``b`` against ``a`` in their overlap."""

    a: Tile
    b: Tile
    window_a: Box  # search windows in tile pixels
    window_b: Box
    method: str = "none"
    matches: int = 0
    inliers: int = 0
    weight: float = 0.0
    angle: float = 0.0
    pts_a: np.ndarray | None = None
    pts_b: np.ndarray | None = None
    loose_a: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    loose_b: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def name(self) -> str:
        return f"{tile_name(self.a)}-{tile_name(self.b)}"

    @property
    def matched(self) -> bool:
        return self.method != "none"


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


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


def _centre_crop(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Central ``shape`` crop and its (x, y) origin in ``image``."""
    y0, x0 = (image.shape[0] - shape[0]) // 2, (image.shape[1] - shape[1]) // 2
    return image[y0 : y0 + shape[0], x0 : x0 + shape[1]], np.array([x0, y0], dtype=np.float64)


def _phase_pair(
    strip_a: np.ndarray, strip_b: np.ndarray, origin_a: np.ndarray, origin_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Translation from phase correlation, as the corners of the implied overlap."""
    shape = (min(strip_a.shape[0], strip_b.shape[0]), min(strip_a.shape[1], strip_b.shape[1]))
    crop_a, shift_a = _centre_crop(strip_a, shape)
    crop_b, shift_b = _centre_crop(strip_b, shape)
    fa, fb = crop_a.astype(np.float32), crop_b.astype(np.float32)
    window = cv2.createHanningWindow(fa.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(fb, fa, window)
    # crop_a(p) ~ crop_b(p - (dx, dy)): a point p in b's crop is p + (dx, dy) in a's crop.
    corners = _corners(shape)
    return corners + origin_a + shift_a + (dx, dy), corners + origin_b + shift_b


def _register_pair(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pair: _Pair,
    min_inliers: int,
    min_ncc: float,
    loose_px: float,
) -> _Pair:
    """Rigid b -> a estimate of one pair, plus its loose matches (within ``loose_px`` of it)."""
    strip_a, strip_b = _crop(image_a, pair.window_a), _crop(image_b, pair.window_b)
    origin_a = np.array(pair.window_a[:2], dtype=np.float64)
    origin_b = np.array(pair.window_b[:2], dtype=np.float64)
    matches, pts_a, pts_b, inliers = _sift_pair(strip_a, strip_b, origin_a, origin_b)
    pair.matches = matches
    all_a, all_b = pts_a, pts_b
    if inliers is not None and inliers.sum() >= min_inliers:
        pair.method, pair.inliers = "sift", int(inliers.sum())
        pts_a, pts_b = pts_a[inliers], pts_b[inliers]
    else:
        pair.method, pair.inliers = "phase", 0
        pts_a, pts_b = _phase_pair(strip_a, strip_b, origin_a, origin_b)
    b_to_a = _fit_rigid(pts_b, pts_a)
    score = _overlap_ncc(image_a, image_b, _rigid(0.0, 0.0, 0.0), b_to_a)
    if score is None or score < min_ncc:
        pair.method, pair.inliers = "none", 0
        return pair
    # a phase-correlation pair counts as much as the weakest acceptable feature match
    pair.weight = float(max(pair.inliers, min_inliers))
    pair.angle = math.atan2(b_to_a[1, 0], b_to_a[0, 0])
    pair.pts_a, pair.pts_b = pts_a, pts_b
    near = np.linalg.norm(_apply(b_to_a, all_b) - all_a, axis=1) < loose_px
    pair.loose_a, pair.loose_b = all_a[near], all_b[near]
    return pair


def _neighbour_pairs(
    keys: list[Tile], prior: dict[Tile, np.ndarray], shape: tuple[int, int], search: float
) -> list[_Pair]:
    """Pairs whose prior boxes overlap along at least half a tile side, with search windows."""
    h, w = shape
    margin = np.array([search * w, search * h])
    pairs = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            d = prior[b] - prior[a]  # b's origin in a's pixels
            extent = np.array([w, h]) - np.abs(d)
            if np.any(extent <= 0) or (extent[0] < w / 2 and extent[1] < h / 2):
                continue
            low = np.maximum(d, 0) - margin
            high = np.minimum(d, 0) + np.array([w, h]) + margin
            windows = []
            for lo, hi in ((low, high), (low - d, high - d)):
                x0, y0 = np.maximum(np.floor(lo), 0).astype(int)
                x1, y1 = np.minimum(np.ceil(hi), [w, h]).astype(int)
                windows.append((int(x0), int(y0), int(x1), int(y1)))
            pairs.append(_Pair(a, b, windows[0], windows[1]))
    return pairs


# ------------------------------------------------------------------------------ global solve


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

    matched = [p for p in pairs if p.matched]
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
    links = [(p.a, p.b) for p in pairs if p.matched]
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


# ------------------------------------------------------------------------ elastic correction


def _overlap_flow(
    image_a: np.ndarray,
    image_b: np.ndarray,
    pose_a: np.ndarray,
    pose_b: np.ndarray,
    mesh_a: np.ndarray | None,
    mesh_b: np.ndarray | None,
    step: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Reliable samples of the misfit left in an overlap: points q (N, 2) and flow f (N, 2).

    ``f(q)`` is such that tile a, as rendered now, shows at panorama point q what tile b
    shows at ``q + f``. Samples whose forward and backward flows disagree, or that lie within
    ``_FLOW_BORDER_PX`` of the edge of the common area, are dropped.
    """
    overlap = _overlap_samples(image_a, image_b, pose_a, pose_b, mesh_a, mesh_b)
    if overlap is None:
        return None
    a, b, valid, box = overlap
    a[~valid], b[~valid] = float(a[valid].mean()), float(b[valid].mean())
    a8, b8 = to_uint8_pair(a, b)
    forward, backward = dense_flow(a8, b8), dense_flow(b8, a8)
    reliable = consistency_error(forward, backward) < _FLOW_CONSISTENCY_PX
    kernel = np.ones((2 * _FLOW_BORDER_PX + 1,) * 2, np.uint8)
    reliable &= cv2.erode(valid.astype(np.uint8), kernel).astype(bool)
    ys, xs = np.mgrid[step // 2 : valid.shape[0] : step, step // 2 : valid.shape[1] : step]
    keep = reliable[ys, xs]
    ys, xs = ys[keep], xs[keep]
    if xs.size == 0:
        return None
    points = np.column_stack([xs + box[0], ys + box[1]]).astype(np.float64)
    return points, forward[ys, xs].astype(np.float64)


def _feature_flow(pair: _Pair, poses: dict[Tile, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The pair's loose feature matches as misfit samples: q = pose_a(p_a), f = pose_b(p_b) - q."""
    q = _apply(poses[pair.a], pair.loose_a)
    return q, _apply(poses[pair.b], pair.loose_b) - q


def _bilinear_rows(
    points: np.ndarray, pose: np.ndarray, shape: tuple[int, int], nodes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mesh-node indices (N, 4) and bilinear weights (N, 4) of panorama points in one tile."""
    p = _apply(cv2.invertAffineTransform(pose), points)
    nx, ny = _node_coords(p[:, 0], p[:, 1], shape, nodes)
    ix = np.clip(np.floor(nx).astype(int), 0, nodes[1] - 2)
    iy = np.clip(np.floor(ny).astype(int), 0, nodes[0] - 2)
    tx, ty = np.clip(nx - ix, 0, 1), np.clip(ny - iy, 0, 1)
    index = np.column_stack(
        [iy * nodes[1] + ix, iy * nodes[1] + ix + 1, (iy + 1) * nodes[1] + ix,
         (iy + 1) * nodes[1] + ix + 1]
    )  # fmt: skip
    weights = np.column_stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty])
    return index, weights


def _regulariser(
    nodes: tuple[int, int], n_tiles: int, smoothness: float
) -> scipy.sparse.csr_matrix:
    """Bending rows (second differences of neighbouring nodes of a tile vanish) and a tiny
    pull of every node to 0 (the gauge)."""
    gh, gw = nodes
    ids = np.arange(gh * gw).reshape(gh, gw)
    triples = np.concatenate(
        [np.column_stack([ids[:, :-2].ravel(), ids[:, 1:-1].ravel(), ids[:, 2:].ravel()]),
         np.column_stack([ids[:-2].ravel(), ids[1:-1].ravel(), ids[2:].ravel()])]
    )  # fmt: skip
    per_tile = gh * gw
    triples = np.concatenate([triples + t * per_tile for t in range(n_tiles)])
    n, total = len(triples), per_tile * n_tiles
    root = math.sqrt(smoothness)
    bending = scipy.sparse.csr_matrix(
        (np.tile([root, -2 * root, root], n), (np.repeat(np.arange(n), 3), triples.ravel())),
        shape=(n, total),
    )
    gauge = math.sqrt(_MESH_GAUGE_WEIGHT) * scipy.sparse.eye(total, format="csr")
    return scipy.sparse.vstack([bending, gauge]).tocsr()


def _robust_solve(
    data: scipy.sparse.csr_matrix, target: np.ndarray, regulariser: scipy.sparse.csr_matrix
) -> np.ndarray:
    """Least squares of ``data x = target`` plus the regulariser, refitted without outliers.

    A feature or flow sample that locked onto the wrong structure disagrees with the smooth
    solution its neighbours agree on; samples whose residual exceeds ``_OUTLIER_FACTOR``
    times the median residual (and ``_OUTLIER_MIN_PX``) are dropped and the system is solved
    again, twice.
    """
    prior = regulariser.T @ regulariser
    keep = np.ones(data.shape[0], bool)
    for _ in range(3):
        rows = data[keep]
        normal = (rows.T @ rows + prior).tocsc()
        solution = scipy.sparse.linalg.splu(normal).solve(np.asarray(rows.T @ target[keep]))
        residual = np.linalg.norm(data @ solution - target, axis=1)
        limit = max(_OUTLIER_MIN_PX, _OUTLIER_FACTOR * float(np.median(residual[keep])))
        keep = residual <= limit
    return solution


def _data_rows(
    points: np.ndarray,
    pair: _Pair,
    poses: dict[Tile, np.ndarray],
    shape: tuple[int, int],
    nodes: tuple[int, int],
    offset: dict[Tile, int],
    total: int,
) -> scipy.sparse.csr_matrix:
    """Rows evaluating ``V_b(q) - V_a(q)`` (bilinear in the mesh nodes) at panorama points."""
    index_b, weight_b = _bilinear_rows(points, poses[pair.b], shape, nodes)
    index_a, weight_a = _bilinear_rows(points, poses[pair.a], shape, nodes)
    rows = np.repeat(np.arange(len(points)), 8)
    cols = np.hstack([index_b + offset[pair.b], index_a + offset[pair.a]]).ravel()
    vals = np.hstack([weight_b, -weight_a]).ravel()
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(points), total))


def _elastic_meshes(
    tiles: dict[Tile, np.ndarray],
    poses: dict[Tile, np.ndarray],
    pairs: list[_Pair],
    spacing: int,
    smoothness: float,
    iterations: int,
) -> tuple[dict[Tile, np.ndarray], dict[str, int]]:
    """Per tile a (rows, cols, 2) mesh of (dx, dy) panorama pixels, solved jointly.

    The first round uses the feature matches of every pair only (they find misfits of many
    pixels, also where the overlap is thin); each of the ``iterations`` flow rounds adds the
    dense flow measured after the current meshes, asking
    ``V_b(q) - V_a(q) = V_b^old(q) - V_a^old(q) + f(q)``. Returns the meshes and, per pair
    name, the number of feature plus flow samples of the last round.
    """
    keys = list(tiles)
    shape = tiles[keys[0]].shape
    nodes = _node_grid(shape, spacing)
    per_tile = nodes[0] * nodes[1]
    offset = {tile: i * per_tile for i, tile in enumerate(keys)}
    total = per_tile * len(keys)
    regulariser = _regulariser(nodes, len(keys), smoothness)
    matched = [p for p in pairs if p.matched]
    feature_rows, feature_rhs = [], []
    for pair in matched:
        points, flow = _feature_flow(pair, poses)
        feature_rows.append(_data_rows(points, pair, poses, shape, nodes, offset, total))
        feature_rhs.append(flow)
    solution = np.zeros((total, 2))
    meshes: dict[Tile, np.ndarray] = {}
    samples = {p.name: len(p.loose_a) for p in matched}
    for round_ in track(range(iterations + 1), "Elastic correction"):
        blocks, targets = list(feature_rows), list(feature_rhs)
        for pair in matched if round_ else []:
            measured = _overlap_flow(
                tiles[pair.a], tiles[pair.b], poses[pair.a], poses[pair.b],
                meshes.get(pair.a), meshes.get(pair.b), max(2, spacing // 2),
            )  # fmt: skip
            samples[pair.name] = len(pair.loose_a) + (0 if measured is None else len(measured[0]))
            if measured is not None:
                rows = _data_rows(measured[0], pair, poses, shape, nodes, offset, total)
                blocks.append(rows)
                targets.append(measured[1] + rows @ solution)
        if not blocks or sum(b.shape[0] for b in blocks) == 0:
            break
        solution = _robust_solve(
            scipy.sparse.vstack(blocks).tocsr(), np.vstack(targets), regulariser
        )
        meshes = {
            tile: solution[offset[tile] : offset[tile] + per_tile].reshape(*nodes, 2)
            for tile in keys
        }
    return meshes, samples


# ----------------------------------------------------------------------------------- render


def _feather(shape: tuple[int, int]) -> np.ndarray:
    """Weight = distance (in pixels, >= 1) to the nearest tile border."""
    h, w = shape
    ys = np.minimum(np.arange(1, h + 1), np.arange(h, 0, -1)).astype(np.float32)
    xs = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float32)
    return np.minimum(ys[:, None], xs[None, :])


def _frame(
    poses: dict[Tile, np.ndarray], shape: tuple[int, int], margin: float
) -> tuple[dict[Tile, np.ndarray], tuple[int, int]]:
    """Poses shifted so that every placed tile (plus ``margin``) has non-negative pixels."""
    placed = np.vstack([_apply(pose, _corners(shape)) for pose in poses.values()])
    shift = -np.floor(placed.min(0) - margin + 1e-6)
    moved = {t: p + np.hstack([np.zeros((2, 2)), shift[:, None]]) for t, p in poses.items()}
    size = np.floor(placed.max(0) + shift + margin + 1e-6).astype(int) + 1
    return moved, (int(size[1]), int(size[0]))


def _render(
    tiles: dict[Tile, np.ndarray],
    poses: dict[Tile, np.ndarray],
    meshes: dict[Tile, np.ndarray],
    size: tuple[int, int],
) -> np.ndarray:
    """Feather-blend all tiles into a ``size`` (h, w) panorama of the tiles' dtype."""
    shape = next(iter(tiles.values())).shape
    total = np.zeros(size, np.float32)
    weight = np.zeros_like(total)
    feather = _feather(shape)
    for tile, image in track(tiles.items(), "Blending tiles"):
        mesh = meshes.get(tile)
        reach = 0.0 if mesh is None else float(np.abs(mesh).max())
        box = _apply(poses[tile], _corners(shape))
        x0, y0 = np.maximum(np.floor(box.min(0) - reach).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(box.max(0) + reach).astype(int) + 1, size[::-1])
        maps = _tile_maps(poses[tile], mesh, shape, (int(x0), int(y0), int(x1), int(y1)))
        values, valid = _sample(image, maps, cubic=True)
        weights, _ = _sample(feather, maps)
        weights[~valid] = 0
        total[y0:y1, x0:x1] += values * weights
        weight[y0:y1, x0:x1] += weights
    covered = weight > 1e-6
    total[covered] /= weight[covered]
    return to_dtype(total, next(iter(tiles.values())).dtype)


# ------------------------------------------------------------------------------------ public


def _grid_prior(keys: list[Tile], shape: tuple[int, int], overlap: float) -> dict:
    if not all(isinstance(k, tuple) and len(k) == 2 for k in keys):
        raise VemvizError("tiles without positions must be keyed by (row, col)")
    _check_complete(keys, _grid_of(keys))  # type: ignore[arg-type]
    h, w = shape
    step = (w - round(overlap * w), h - round(overlap * h))
    return {(r, c): np.array([(c - 1) * step[0], (r - 1) * step[1]], float) for r, c in keys}


def stitch_tiles(
    tiles: dict[Any, np.ndarray],
    overlap_hint: float = 0.1,
    min_inliers: int = 12,
    min_ncc: float = 0.3,
    positions: dict[Any, np.ndarray] | None = None,
    search: float | None = None,
    elastic: bool = True,
    mesh_spacing: int | None = None,
    smoothness: float = 1.0,
    iterations: int = 2,
    search_px: float = 20.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stitch same-shape 2D tiles into a panorama (tile dtype) and a report.

    ``tiles`` is a complete grid ``{(row, col): image}`` (1-based) laid out with
    ``overlap_hint`` (fraction of the tile width/height), or any keys with approximate
    top-left ``positions`` ``{key: (x, y)}``. ``search``: margin (fraction of the tile size)
    around each prior overlap searched for matches (default ``overlap_hint``). A pair needs
    ``min_inliers`` RANSAC inliers to count as a feature match (else phase correlation is
    tried) and an overlap NCC of at least ``min_ncc`` to be used. ``elastic`` adds the local
    mesh correction (nodes every ``mesh_spacing`` px, default 1/24 of the shorter tile side,
    membrane weight ``smoothness``, ``iterations`` rounds of flow measurement and solve).

    The report holds ``overlaps`` (per pair: method sift/phase/none, matches, inliers,
    residual_px of the matched points after the rigid solve, flow_samples, ncc_before on the
    prior layout, ncc_rigid and ncc_after the elastic correction), ``unmatched_pairs``,
    ``placed_by_prior`` (tiles no matched pair links to the first one), ``warnings`` (one line
    per such tile or pair), the mean NCCs and ``tiles`` (per name: x, y of pixel (0, 0),
    rotation_deg, 2x3 ``matrix`` tile -> panorama pixels, ``mesh``: None or the (rows, cols, 2)
    elastic displacement mesh, and its largest shift in px; see `tile_to_panorama`).
    """
    if not tiles:
        raise VemvizError("no tiles to stitch")
    if not 0 < overlap_hint < 0.5:
        raise VemvizError(f"overlap hint must be between 0 and 0.5, got {overlap_hint}")
    keys = sorted(tiles, key=lambda k: (str(type(k)), k))
    shape = tiles[keys[0]].shape
    if any(tiles[k].ndim != 2 or tiles[k].shape != shape for k in keys):
        raise VemvizError("all tiles must be 2D images of the same shape")
    if min(shape) < 16:
        raise VemvizError(f"tiles of {shape[1]}x{shape[0]} px are too small to stitch")
    if positions is None:
        prior = _grid_prior(keys, shape, overlap_hint)
    else:
        if set(positions) != set(tiles):
            raise VemvizError("every tile needs exactly one position")
        prior = {k: np.asarray(positions[k], dtype=np.float64) for k in keys}
    pairs = _neighbour_pairs(keys, prior, shape, overlap_hint if search is None else search)
    if len(keys) > 1 and not pairs:
        raise VemvizError(
            "no two tiles overlap in the given layout; check the positions or the overlap hint"
        )
    for pair in track(pairs, "Matching tile overlaps"):
        _register_pair(tiles[pair.a], tiles[pair.b], pair, min_inliers, min_ncc, search_px)
    if pairs and not any(p.matched for p in pairs):
        raise VemvizError(
            "no neighbouring tiles overlap: no pair matched by features or phase correlation; "
            "check the tile order and the overlap hint"
        )
    poses = _solve_poses(keys, pairs, prior)
    spacing = mesh_spacing or max(8, round(min(shape) / 24))
    meshes, samples = (
        _elastic_meshes(tiles, poses, pairs, spacing, smoothness, iterations)
        if elastic
        else ({}, {})
    )
    reach = max((float(np.abs(m).max()) for m in meshes.values()), default=0.0)
    poses, size = _frame(poses, shape, reach)
    prior_poses = {tile: _rigid(0.0, *prior[tile]) for tile in keys}
    overlaps = []
    for p in track(pairs, "Scoring overlaps"):
        a, b = tiles[p.a], tiles[p.b]
        overlaps.append(
            {
                "pair": p.name,
                "method": p.method,
                "matches": p.matches,
                "inliers": p.inliers if p.method == "sift" else 0,
                "residual_px": _residual(p, poses) if p.matched else None,
                "flow_samples": samples.get(p.name, 0),
                "ncc_before": _overlap_ncc(a, b, prior_poses[p.a], prior_poses[p.b]),
                "ncc_rigid": _overlap_ncc(a, b, poses[p.a], poses[p.b]),
                "ncc_after": _overlap_ncc(
                    a, b, poses[p.a], poses[p.b], meshes.get(p.a), meshes.get(p.b)
                ),
            }
        )
    panorama = _render(tiles, poses, meshes, size)
    linked = _connected(keys, pairs)
    unmatched = [p.name for p in pairs if not p.matched]
    placed = [tile_name(t) for t in keys if t not in linked]
    warnings = [
        f"tiles {name} could not be matched (too little overlap or texture); "
        "their relative position comes from the layout"
        for name in unmatched
    ]
    warnings += [
        f"tile {name} matched none of its neighbours; placed from its neighbours' poses "
        "and the layout"
        for name in placed
    ]
    report = {
        "method": "SIFT+RANSAC pairwise (phase-correlation fallback), global least squares, "
        + ("elastic mesh from overlap flow, " if elastic else "")
        + "feathered blending",
        "tile_shape": list(shape),
        "overlap_hint": overlap_hint,
        "mesh_spacing_px": spacing if elastic else None,
        "panorama_shape": list(panorama.shape),
        "overlaps": overlaps,
        "unmatched_pairs": unmatched,
        "placed_by_prior": placed,
        "warnings": warnings,
        "mean_ncc_before": _mean([o["ncc_before"] for o in overlaps]),
        "mean_ncc_rigid": _mean([o["ncc_rigid"] for o in overlaps]),
        "mean_ncc_after": _mean([o["ncc_after"] for o in overlaps]),
        "tiles": {
            tile_name(t): {
                "x": float(poses[t][0, 2]),
                "y": float(poses[t][1, 2]),
                "rotation_deg": math.degrees(math.atan2(poses[t][1, 0], poses[t][0, 0])),
                "matrix": poses[t].tolist(),
                "elastic_max_px": float(np.abs(meshes[t]).max()) if t in meshes else 0.0,
                "mesh": meshes[t].tolist() if t in meshes else None,
            }
            for t in keys
        },
    }
    if positions is None:
        report["grid"] = list(_grid_of(keys))  # type: ignore[arg-type]
    return panorama, report


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
