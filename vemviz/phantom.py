"""A deterministic synthetic EM volume with known ground truth.

The scene is defined in physical space (nm), independently of how it is sampled: cells are the
regions of a Voronoi tessellation whose coordinates are bent by a smooth random warp, so their
boundaries are curved sheets; membranes are the thin shells where a point is almost equally far
from its two nearest cell seeds. Mitochondria are ellipsoids inside one cell each, with a dark
double outer membrane and cristae drawn as stripes across the long axis; vesicles are small
dark-rimmed spheres; one cell holds a nucleus with a double envelope and blotchy chromatin.
Textures are sums of random Fourier modes, evaluated analytically, so the same seed gives the
same structures at any voxel size.

Sampling mimics serial-section EM: each z slice averages sub-planes across its section
thickness, the lateral point-spread function is a Gaussian, and signal-dependent Gaussian noise
plus slow per-slice brightness drift are added. Intensities follow heavy-metal staining:
membranes dark, cytoplasm light. `make_phantom` returns the raw uint8 volume, the noise-free
image, instance labels for cells and mitochondria, a semantic class map and the voxel size;
damaged (blank) slices can be requested for restoration tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from vemviz.errors import VemvizError
from vemviz.volume import Volume, VoxelSize

CLASSES = {0: "cytoplasm", 1: "membrane", 2: "mitochondrion", 3: "vesicle", 4: "nucleus"}

# Staining model: mean intensities (uint8 scale) of each compartment.
CYTOPLASM, MEMBRANE = 172.0, 62.0
MITO_MATRIX, MITO_CRISTAE, MITO_MEMBRANE = 118.0, 78.0, 58.0
VESICLE_RIM, VESICLE_LUMEN = 88.0, 158.0
NUCLEUS, CHROMATIN, ENVELOPE = 146.0, 100.0, 66.0


@dataclass(frozen=True)
class FourierField:
    """A smooth random scalar field: a sum of cosines with random wave vectors."""

    wave_vectors: np.ndarray  # (n, 3) rad/nm, (z, y, x)
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, n: int, wavelength_nm: tuple[float, float]
    ) -> FourierField:
        directions = rng.normal(size=(n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_nm, size=n)
        return cls(
            directions * (2 * np.pi / wavelengths)[:, None],
            rng.uniform(0, 2 * np.pi, size=n),
            rng.uniform(0.5, 1.0, size=n) / np.sqrt(n),
        )

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate at ``points`` (..., 3) in nm."""
        out = np.zeros(points.shape[:-1], dtype=np.float32)
        for k, phase, amplitude in zip(
            self.wave_vectors, self.phases, self.amplitudes, strict=True
        ):
            out += amplitude * np.cos(points @ k.astype(np.float32) + phase)
        return out


@dataclass(frozen=True)
class Mitochondrion:
    centre: np.ndarray  # nm (z, y, x)
    rotation: np.ndarray  # columns: long axis, two short axes
    semi_axes: np.ndarray  # nm
    cell: int
    cristae_period: float


@dataclass(frozen=True)
class Scene:
    """Everything random about a phantom, in physical coordinates (nm)."""

    extent_nm: np.ndarray
    seeds: np.ndarray
    warp: tuple[FourierField, FourierField, FourierField]
    warp_nm: float
    membrane_nm: float
    texture: FourierField
    chromatin: FourierField
    mitochondria: tuple[Mitochondrion, ...]
    vesicles: np.ndarray  # (n, 4): z, y, x, radius
    nucleus: np.ndarray  # z, y, x, radius
    nucleus_cell: int


@dataclass(frozen=True)
class Phantom:
    raw: Volume  # uint8, with any requested damage
    clean: Volume  # uint8 noise-free image (before damage), for scoring restoration
    cells: Volume  # uint32 cell instances, 0 on membranes
    mito: Volume  # uint32 mitochondrion instances
    semantic: Volume  # uint8 classes, see CLASSES
    damaged_slices: tuple[int, ...]


def _cell_distances(scene: Scene, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-seed index and half the gap between the two nearest seeds, after warping."""
    warped = points + scene.warp_nm * np.stack([f(points) for f in scene.warp], axis=-1)
    distances, index = cKDTree(scene.seeds).query(warped.reshape(-1, 3), k=2)
    gap = (distances[:, 1] - distances[:, 0]) / 2
    return index[:, 0].reshape(points.shape[:-1]), gap.reshape(points.shape[:-1])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_scene(
    extent_nm: tuple[float, float, float],
    *,
    n_cells: int = 9,
    n_mitochondria: int = 14,
    n_vesicles: int = 60,
    seed: int = 0,
) -> Scene:
    """Draw a random scene in a box of ``extent_nm`` (z, y, x)."""
    rng = np.random.default_rng(seed)
    extent = np.asarray(extent_nm, dtype=np.float64)
    size = float(np.cbrt(np.prod(extent)))
    seeds = rng.uniform(-0.15, 1.15, size=(n_cells, 3)) * extent
    warp = tuple(FourierField.random(rng, 6, (0.8 * size, 2.0 * size)) for _ in range(3))
    partial = Scene(
        extent, seeds, warp, 0.08 * size, 14.0,
        FourierField.random(rng, 24, (60, 400)), FourierField.random(rng, 24, (80, 250)),
        (), np.zeros((0, 4)), np.zeros(4), -1,
    )  # fmt: skip
    # The nucleus sits in the cell whose seed is deepest inside the box.
    inside = np.all((seeds > 0.2 * extent) & (seeds < 0.8 * extent), axis=1)
    nucleus_cell = int(np.argmax(inside)) if inside.any() else -1
    nucleus = np.zeros(4)
    if nucleus_cell >= 0:
        others = np.delete(seeds, nucleus_cell, axis=0)
        spacing = np.min(np.linalg.norm(others - seeds[nucleus_cell], axis=1))
        nucleus = np.array([*seeds[nucleus_cell], 0.3 * spacing])

    def clear_of_nucleus(point: np.ndarray, radius: float) -> bool:
        return nucleus_cell < 0 or np.linalg.norm(point - nucleus[:3]) > nucleus[3] + radius + 30

    mitochondria: list[Mitochondrion] = []
    for _ in range(n_mitochondria * 50):
        if len(mitochondria) == n_mitochondria:
            break
        radius = rng.uniform(90, 150)
        length = rng.uniform(1.8, 3.5) * radius
        centre = rng.uniform(0.08, 0.92, size=3) * extent
        cell, gap = _cell_distances(partial, centre[None])
        if gap[0] < radius + 40 or not clear_of_nucleus(centre, length):
            continue
        if any(np.linalg.norm(centre - m.centre) < length + m.semi_axes[0] for m in mitochondria):
            continue
        mitochondria.append(
            Mitochondrion(centre, _random_rotation(rng), np.array([length, radius, radius]),
                          int(cell[0]), rng.uniform(55, 80))
        )  # fmt: skip
    vesicles = []
    for _ in range(n_vesicles * 50):
        if len(vesicles) == n_vesicles:
            break
        radius = rng.uniform(18, 32)
        centre = rng.uniform(0.02, 0.98, size=3) * extent
        _, gap = _cell_distances(partial, centre[None])
        far = all(
            np.linalg.norm(centre - m.centre) > m.semi_axes[0] + radius + 20 for m in mitochondria
        )
        if gap[0] > radius + 25 and far and clear_of_nucleus(centre, radius):
            vesicles.append([*centre, radius])
    return Scene(
        extent, seeds, warp, partial.warp_nm, partial.membrane_nm, partial.texture,
        partial.chromatin, tuple(mitochondria), np.array(vesicles).reshape(-1, 4), nucleus,
        nucleus_cell,
    )  # fmt: skip


def _box(centre: np.ndarray, radius: float, axes: list[np.ndarray]) -> tuple[slice, ...]:
    """Index slices of the sample grid covering a sphere of ``radius`` around ``centre``."""
    return tuple(
        slice(int(np.searchsorted(a, c - radius)), int(np.searchsorted(a, c + radius, "right")))
        for a, c in zip(axes, centre, strict=True)
    )


def render_scene(
    scene: Scene, axes: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample the scene on the grid ``axes`` (z, y, x positions in nm).

    Returns (image float32 in uint8 units, cells uint32, mito uint32, semantic uint8).
    """
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)
    cell_index, gap = _cell_distances(scene, grid)
    cells = (cell_index + 1).astype(np.uint32)
    semantic = np.zeros(cells.shape, dtype=np.uint8)
    image = CYTOPLASM + 9.0 * scene.texture(grid)
    mito = np.zeros(cells.shape, dtype=np.uint32)

    if scene.nucleus_cell >= 0:
        box = _box(scene.nucleus[:3], scene.nucleus[3], axes)
        r = np.linalg.norm(grid[box] - scene.nucleus[:3].astype(np.float32), axis=-1)
        inside = (r < scene.nucleus[3]) & (cells[box] == scene.nucleus_cell + 1)
        chromatin = scene.chromatin(grid[box]) > 0.25
        shell = (
            inside
            & (r > scene.nucleus[3] - 28)
            & ~((r > scene.nucleus[3] - 18) & (r < scene.nucleus[3] - 10))
        )
        values = np.where(chromatin, CHROMATIN, NUCLEUS)
        values = np.where(shell, ENVELOPE, values)
        image[box] = np.where(inside, values, image[box])
        semantic[box][inside] = 4

    for label, m in enumerate(scene.mitochondria, start=1):
        box = _box(m.centre, m.semi_axes[0], axes)
        local = (grid[box] - m.centre.astype(np.float32)) @ m.rotation.astype(np.float32)
        r = np.sqrt(np.sum((local / m.semi_axes.astype(np.float32)) ** 2, axis=-1))
        inside = (r < 1) & (cells[box] == m.cell + 1)
        depth = (1 - r) * m.semi_axes[1]  # approximate distance to the surface, nm
        outer = (depth < 9) | ((depth > 13) & (depth < 19))
        cristae = (np.cos(2 * np.pi * local[..., 0] / m.cristae_period) > 0.55) & (depth > 24)
        values = np.where(outer, MITO_MEMBRANE, np.where(cristae, MITO_CRISTAE, MITO_MATRIX))
        image[box] = np.where(inside, values, image[box])
        mito[box][inside] = label
        semantic[box][inside] = 2

    for z, y, x, radius in scene.vesicles:
        box = _box(np.array([z, y, x]), radius, axes)
        r = np.linalg.norm(grid[box] - np.array([z, y, x], dtype=np.float32), axis=-1)
        inside = r < radius
        image[box] = np.where(
            inside, np.where(r > radius - 9, VESICLE_RIM, VESICLE_LUMEN), image[box]
        )
        semantic[box][inside] = 3

    membrane = gap < scene.membrane_nm / 2
    image[membrane] = MEMBRANE
    semantic[membrane] = 1
    cells[membrane] = 0
    mito[membrane] = 0
    return image, cells, mito, semantic


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lookup[labels]


def make_phantom(
    shape: tuple[int, int, int] = (32, 192, 192),
    voxel_size_nm: VoxelSize = (40.0, 8.0, 8.0),
    *,
    seed: int = 0,
    extent_nm: tuple[float, float, float] | None = None,
    damaged_slices: tuple[int, ...] = (),
    noise: float = 14.0,
    psf_nm: float = 8.0,
    thickness_samples: int = 3,
) -> Phantom:
    """Sample a phantom of ``shape`` voxels at ``voxel_size_nm`` (z, y, x).

    ``extent_nm`` fixes the scene box independently of the sampling (defaults to
    shape * voxel size), so a phantom at a finer z spacing over the same extent shows the same
    cells and organelles: the ground truth for isotropic reconstruction.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise VemvizError(f"phantom shape must be three positive sizes, got {shape}")
    vz, vy, vx = voxel_size_nm
    extent = extent_nm or tuple(s * v for s, v in zip(shape, voxel_size_nm, strict=True))
    scene = make_scene(extent, seed=seed)
    ys, xs = np.arange(shape[1]) * vy, np.arange(shape[2]) * vx
    zs = np.arange(shape[0]) * vz
    offsets = (np.arange(thickness_samples) + 0.5) / thickness_samples - 0.5
    image = np.zeros(shape, dtype=np.float32)
    for offset in offsets:
        sub, *_ = render_scene(scene, [zs + offset * vz, ys, xs])
        image += sub / thickness_samples
    _, cells, mito, semantic = render_scene(scene, [zs, ys, xs])
    sigma = (0.0, psf_nm / vy, psf_nm / vx)
    clean = gaussian_filter(image, sigma)
    rng = np.random.default_rng(seed + 1)
    drift = rng.normal(0, 3.0, size=(shape[0], 1, 1)).astype(np.float32)
    scale = np.sqrt(np.clip(clean, 1, None) / CYTOPLASM).astype(np.float32)
    noisy = clean + drift + noise * scale * rng.standard_normal(shape, dtype=np.float32)
    raw = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    clean_u8 = np.clip(np.round(clean), 0, 255).astype(np.uint8)
    for z in damaged_slices:
        if not 0 <= z < shape[0]:
            raise VemvizError(f"damaged slice {z} is outside 0..{shape[0] - 1}")
        raw[z] = 0
    meta = {"source": "vemviz phantom", "seed": seed}
    voxel = (float(vz), float(vy), float(vx))
    return Phantom(
        raw=Volume(raw, voxel, meta),
        clean=Volume(clean_u8, voxel, meta),
        cells=Volume(_relabel_sequential(cells), voxel, meta),
        mito=Volume(_relabel_sequential(mito), voxel, meta),
        semantic=Volume(semantic, voxel, meta),
        damaged_slices=tuple(damaged_slices),
    )
