"""Block adapters: each voxel stage as a `vemviz.chunked.BlockStage`.

An adapter never re-implements its stage: it maps an output block to the input box the
stage's method needs, calls the stage's public array function on that box, and crops. The
halo is what makes block results equal to whole-volume results:

- inpaint (`restore.fill_damage`): blocks span z slabs of whole slices (optical flow sees whole
  images); the input slab is widened to the two nearest good slices below and above every
  damaged slice of the block, which is all a filled slice depends on (the outer ones bend the
  flow's paths). A damage mask (detected, given, or kept off an alignment's padding) is built
  first, in a pass that reads the slices one at a time (`restore.scan_damage`, whose sweeps over
  the slices run as tasks of one z chunk on the runner's workers when the budget allows,
  `_sweep_run`) and writes the mask slab by slab into the work folder; the blocks read their
  part of it. The diffusion model's intensity range (of the undamaged voxels) is streamed from
  it once, so every block normalises as the whole volume does in memory. What learns from the
  volume does so once, before the blocks, on the undamaged slices of the central slab
  (`training_box`), as learned iso and sr train: ``--fine-tune`` of the diffusion model, and the
  inr fills' networks (one per gap length), kept in the work folder; for the inr fills each
  block reads `restore.INR_CONTEXT` good slices on each side, all a fill reads.
- iso (`iso.interpolate_z`): output slice ``k`` depends on input slices ``floor(k/F)`` and the
  next one (linear; flow also on one more on each side, which bend its paths), so a block of
  output slices reads only its input slab (and one slice of halo for flow); the natural
  cubic spline is global along z, but its influence decays by ~0.27 per slice, so 16 slices of
  halo make blocks agree to ~1e-9 of the range. Each block resamples its slab at its own part
  of the whole volume's output positions (`iso.resample_z`), so any factor works, 50 / 4.6
  included. Flow needs whole planes; linear and cubic act per pixel column, so their blocks
  tile y and x too.
  ``inr`` runs in two passes: its flow half first, on slabs of whole planes (one slice of
  halo) planned from the memory budget as for ``flow``, as float32 into the work folder;
  then the network on blocks that tile y and x too, with the larger of cubic's halo and the
  network's reach along z and, in y and x, the network's reach plus its neighbour planes'
  offsets (`vemviz.inr.reach`); each block fuses the stored flow.
- sr (`sr.upscale_xy`): bicubic upscaling by an integer scale reads 4 x 4 input pixels, so 4
  pixels of y/x halo suffice (``learned``: the network's reach if wider); it clips
  to the input's value range, so each block carries one extra guard slice holding the whole
  volume's minimum and maximum, removed afterwards.
- learned iso and sr (`Learned`): one model for all blocks. It is the given ``--model`` or is
  trained once, before the blocks, on a central slab of the volume (`training_slab`; for iso
  with its weight against flow, `iso.train_inr`), and is kept in the work folder, so a resumed
  run applies the same one. Every block is normalised with the whole volume's intensity mean and
  standard deviation (streamed once), not its own, so blocks equal the in-memory result of the
  same model with the same normalisation.
- align (`align.apply_transforms`): z slabs of whole sections with their slice of the
  transforms (a warp can move any pixel anywhere in its section). ``align`` itself first
  registers the sections (`align.register_sections`) before the blocks, each of its passes
  over the sections as tasks of one z chunk on the runner's workers when the budget allows.
- segment (`segment.segment`): instance labels need one numbering across blocks. Each block is
  segmented with a halo of ``halo_nm`` (physical units, so context is the same for any voxel
  size) and its core written with block-local ids; the two voxel layers on each side of every
  face between blocks are kept (the block's own boundary layer and its view of the neighbour's
  first layer). An object seen by both blocks across a face is merged when the two views
  overlap on at least half of the smaller cross-section; the merges are solved as connected
  components of a graph over all ids, which are then numbered 1..N in block order and written
  in a second pass. What the method takes from the whole volume is computed once before the
  blocks, streamed in bounded tasks: the classical threshold (Otsu over the whole smoothed
  volume, `mito_threshold`) and the learned model's intensity range (`intensity_range`).
  The learned model predicts a fixed grid of tiles anchored at the volume's origin, each from
  its own window (`unet.predict_planes`), so a block that reads the whole tiles around it
  (`segment.prediction_box`) gets exactly the in-memory probabilities. They are computed in a
  first pass (slabs of whole planes when only XY planes are predicted, so every tile is
  predicted once) into the work folder, and the labels of each block are then made from the
  stored probabilities with the halo. Either way the labels equal the in-memory ones.
  Prompts choose objects on the planes they name, assembled from the blocks' ids and their
  tables before the numbering pass, which then writes only the chosen objects.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.filters import threshold_otsu

from vemviz import align as align_mod
from vemviz import intensity
from vemviz import iso as iso_mod
from vemviz import restore as restore_mod
from vemviz import segment as segment_mod
from vemviz import sr as sr_mod
from vemviz.chunked import (
    WHOLE_PLANE_ALLOWANCE,
    BlockStage,
    Box,
    Grid,
    Runner,
    Work,
    check_output,
    create_store,
    lazy,
    mark_done,
    pending_blocks,
    place,
    plan_grid,
    read_box,
    read_region,
    region_of,
    run_blocks,
    write_block,
    write_levels,
)  # fmt: skip
from vemviz.errors import VemvizError
from vemviz.io import write_volume
from vemviz.progress import status, track
from vemviz.volume import Volume, VoxelSize

# Peak working memory of one step of registration's and detection's passes over a slice
# (elastic flows of a section and its references, the heaviest), per plane pixel: measured on
# 2048 x 2048 slices (elastic 100, registration 87, detection residuals 69), plus the warped
# sections a task keeps (`/work/notes/exp/sweep_mem.py` of the 2026-12-05 session).
SWEEP_BYTES_PER_PLANE_PIXEL = 112.0

_CUBIC_HALO = 16
_SR_HALO = 4
TRAINING_SLAB_VOXELS = 2**24  # what a learned block stage trains on (64 MiB as float32)
TRAINING_SLAB_SIDE = 1024


def _box(z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> Box:
    return (slice(*z), slice(*y), slice(*x))


def _grow(box: Box, halo: Sequence[int], shape: tuple[int, ...]) -> Box:
    """``box`` widened by ``halo`` voxels on each side, clipped to ``shape``."""
    return tuple(
        slice(max(b.start - h, 0), min(b.stop + h, n))
        for b, h, n in zip(box, halo, shape, strict=True)
    )  # type: ignore[return-value]


def _local(box: Box, region_box: Box) -> Box:
    return tuple(
        slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region_box, strict=True)
    )  # type: ignore[return-value]


def _span(s: slice) -> tuple[int, int]:
    return (s.start, s.stop)


# --- inpaint ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintBlocks(BlockStage):
    """`inpaint` by blocks: given whole ``slices``, and with ``detect``, a ``mask`` volume file
    or an alignment's ``transforms`` a damage mask, built first (`damage_pass`); ``method``,
    ``diffusion`` and the inr's ``training`` as in `vemviz.restore.fill_damage`. What learns
    from the volume does so once, before the blocks, on the undamaged slices of
    `training_box`: fine-tuning (``diffusion.fine_tune`` steps) and the inr networks (one per
    gap length); the blocks apply those models."""

    slices: tuple[int, ...] = ()
    method: str = "auto"
    detect: bool = False
    mask: str | None = None  # a damage mask volume (non-zero: damaged)
    transforms: dict[str, Any] | None = None  # the stack's alignment: its padding is no damage
    mask_out: str | None = None  # OME-Zarr path for the damage mask used
    diffusion: restore_mod.DiffusionOptions = field(default_factory=restore_mod.DiffusionOptions)
    training: Any = None  # inr, ensemble: `vemviz.inr.Training` (None: its defaults)
    voxel: VoxelSize | None = None  # the volume's (prepare)
    inr_models: dict[int, str] = field(default_factory=dict)  # gap length -> file (damage pass)
    damaged: tuple[int, ...] = ()  # slices with damage (prepare, or the damage pass)
    damage_store: str | None = None  # the damage pass's mask in the work folder
    damage: dict[str, Any] = field(default_factory=dict, compare=False)  # its report
    name = "inpaint"
    full_planes = True
    bytes_per_voxel = 5.0  # the slab, its copy and its mask
    bytes_per_plane_pixel = 120.0  # flows, bends and float planes of a filled slice (measured)

    @property
    def masked(self) -> bool:
        """Whether the damage is a mask (detected, given, or kept off an alignment's padding)
        rather than the given whole slices."""
        return self.detect or self.mask is not None or self.transforms is not None

    @property
    def interpolates_given_slices(self) -> bool:
        """Given whole slices, filled by flow or linear interpolation (auto: flow): nothing
        to prepare before the blocks."""
        return not self.masked and self.method in ("auto", "flow", "linear")

    def prepare(self, volume: Volume, runner: Runner) -> InpaintBlocks:
        if not (self.slices or self.detect or self.mask is not None):
            raise VemvizError(
                "nothing to inpaint: pass --slices 3,17,40-42, --mask MASK and/or --detect"
            )
        bad = tuple(sorted(set(self.slices)))
        if self.mask is not None:
            restore_mod.check_mask(volume.data, self._mask_volume().data)
        elif self.interpolates_given_slices:
            _check_good_slice(len(bad), volume.shape[0])
            return replace(self, slices=bad, damaged=bad)
        if self.method in restore_mod.INR_METHODS:  # its clear error before any pass
            restore_mod.gap_spacing(volume.voxel_size_nm)
        return replace(self, slices=bad, voxel=volume.voxel_size_nm)

    def _mask_volume(self) -> Volume:
        from vemviz.io import read_volume

        return read_volume(self.mask)  # type: ignore[arg-type]

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        stage = self if self.interpolates_given_slices else self.damage_pass(volume, work, runner)
        object.__setattr__(self, "damage", stage.damage)
        computed = run_blocks(stage, volume, work, grid, runner)
        if self.mask_out is not None and stage.damage_store is not None:
            place(Path(stage.damage_store), Path(self.mask_out))
        return computed

    def damage_pass(self, volume: Volume, work: Work, runner: Runner) -> InpaintBlocks:
        """The stage with its damage mask written to the work folder (uint8 OME-Zarr, 1 =
        damaged) slab by slab: the given slices and mask, and the damage detected on the
        slices streamed one at a time (`vemviz.restore.scan_damage`, in chunk tasks on the
        runner's workers when the budget allows), all off the alignment's padding; plus, for
        diffusion fills, the intensity range of the undamaged voxels and the fine-tuned model,
        and for inr fills their networks. A resumed run reads what the first one recorded."""
        from vemviz.io.atomic import write_json

        store, record = work.root / "damage.ome.zarr", work.root / "damage.json"
        tuned = work.root / "diffusion_model"
        if not record.is_file():
            damage = self._write_damage(volume, store, runner)
            _check_good_slice(len(damage["damaged"]), volume.shape[0])
            used = set(damage["methods"].values())
            diffuses = bool(used & set(restore_mod.DIFFUSION_METHODS))
            if diffuses:
                damage["value_range"] = _undamaged_range(volume, store, runner)
            tunes = diffuses and self.diffusion.fine_tune > 0
            by_inr = bool(used & set(restore_mod.INR_METHODS))
            if tunes or by_inr:  # both learn from the central slab's undamaged slices
                box = training_box(volume.shape)
                slab = np.asarray(lazy(volume)[box])
                slab_damage = read_box(store, "0", box) != 0
            if tunes:
                damage["fine_tune"] = self._fine_tune(slab, slab_damage, damage, tuned)
            if by_inr:
                runs = restore_mod.gap_runs(damage["damaged"], volume.shape[0])
                damage["inr_training"] = self._train_inr(slab, slab_damage, runs, work)
            write_json(record, damage)
        damage = json.loads(record.read_text())
        for key in ("methods", "inr_training"):  # JSON keys are strings
            if key in damage:
                damage[key] = {int(k): value for k, value in damage[key].items()}
        diffusion = self.diffusion
        if "value_range" in damage:
            diffusion = replace(diffusion, value_range=tuple(damage["value_range"]))
        if "fine_tune" in damage:
            diffusion = replace(diffusion, weights=tuned, fine_tune=0)
        models = {run: str(_gap_model(work, run)) for run in damage.get("inr_training", {})}
        return replace(self, damaged=tuple(damage["damaged"]), damage_store=str(store),
                       damage=damage, diffusion=diffusion, inr_models=models)  # fmt: skip

    def _train_inr(
        self, slab: np.ndarray, slab_damage: np.ndarray, runs: set[int], work: Work
    ) -> dict[int, dict[str, Any]]:
        """Train the inr network of each gap length in ``runs`` on the undamaged slices of
        ``slab`` (`training_box`'s voxels) and save them in the work folder; their training
        reports by length."""
        from vemviz import inr

        clean = ~slab_damage.reshape(len(slab), -1).any(axis=1)
        filler = restore_mod.InrFiller(slab, np.flatnonzero(clean), self.voxel, self.training)
        reports = {}
        for run in sorted(runs):
            model = filler.model(run)
            inr.save_model(model, _gap_model(work, run))
            reports[run] = inr.training_report(model)
        return reports

    def _fine_tune(
        self, slab: np.ndarray, slab_damage: np.ndarray, damage: dict[str, Any], path: Path
    ) -> dict[str, Any]:
        """Fine-tune the diffusion model on the undamaged slices of ``slab`` (`training_box`'s
        voxels; with the whole volume's intensity range) and save it at ``path``; its report."""
        from vemviz import diffusion

        options = replace(self.diffusion, value_range=tuple(damage["value_range"]))
        filler = restore_mod.DiffusionFiller(slab, slab_damage, options)
        diffusion.save_model(filler.model, path)
        return filler.report()

    def _write_damage(self, volume: Volume, store: Path, runner: Runner) -> dict[str, Any]:
        n_z, height, width = volume.shape
        source = _slice_source(volume, runner, self.transforms)
        damage: dict[str, Any] = {}
        found = None
        if self.detect:
            damage["detection"], found = restore_mod.scan_damage(source, _sweep_run(source, runner))
        given = None if self.mask is None else lazy(self._mask_volume())
        depth = max(1, min(n_z, runner.memory_budget // (8 * height * width)))
        grid = Grid(volume.shape, (depth, height, width))
        create_store(store, grid, np.dtype(np.uint8), volume.voxel_size_nm, "damage")
        counts = np.zeros(n_z, dtype=np.int64)
        outside = 0
        for i in track(range(len(grid)), "inpaint: writing the damage mask"):
            box = grid.box(i)
            z0, z1 = _span(box[0])
            slab = np.zeros((z1 - z0, height, width), dtype=bool)
            if given is not None:
                slab |= np.asarray(given[z0:z1]) != 0
            for z in range(z0, z1):
                if z in self.slices:
                    slab[z - z0] = True
                elif found is not None:
                    slab[z - z0] |= found.get(z)
                padding = source.outside(z)
                slab[z - z0] &= ~padding
                outside += int(padding.sum())
            counts[z0:z1] = slab.reshape(len(slab), -1).sum(axis=1)
            write_levels(store, box, slab.astype(np.uint8), True, grid.levels)
        methods = restore_mod.slice_methods(counts / (height * width), self.method)
        damage.update(damaged=sorted(methods), methods=methods, damaged_voxels=int(counts.sum()))
        if self.transforms is not None:
            damage["outside_voxels"] = outside
        return damage

    def report(self) -> dict[str, Any]:
        filled = self.damage.get("damaged", self.damaged)
        report = {k: v for k, v in self.damage.items() if k not in ("damaged", "value_range")}
        return {**report, "method": self.method, "filled": list(filled)}

    def cost(self, box: Box) -> float:
        z0, z1 = _span(box[0])
        return 1.0 + sum(z0 <= z < z1 for z in self.damaged)

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        """The block's slices and, on each side, the good slices its fills read: the nearest
        and the one beyond it (flow bends its paths through them), or for the inr fills
        `restore.INR_CONTEXT` of them."""
        bad = set(self.damaged)
        z0, z1 = _span(box[0])
        reach = restore_mod.INR_CONTEXT if self.method in restore_mod.INR_METHODS else 2

        def past_good(z: int, step: int) -> int:
            """The slice ``reach`` good slices away from ``z`` (counted from it), or the end."""
            found = 0
            while 0 <= z + step < in_shape[0]:
                found += z not in bad
                if found == reach:
                    return z
                z += step
            return z

        low, high = past_good(z0, -1), past_good(z1 - 1, 1)
        return _box((low, high + 1), (0, in_shape[1]), (0, in_shape[2]))

    def compute(self, region: np.ndarray, region_box: Box, box: Box) -> np.ndarray:
        z_lo, z_hi = _span(region_box[0])
        z0, z1 = _span(box[0])
        own = [z - z_lo for z in self.damaged if z0 <= z < z1]
        if not own:
            return region[_local(box, region_box)]
        if self.damage_store is None:  # whole slices
            mask = np.zeros(region.shape, dtype=bool)
            mask[[z - z_lo for z in self.damaged if z_lo <= z < z_hi]] = True
        else:
            mask = read_box(Path(self.damage_store), "0", region_box) != 0
        device = "auto" if self.training is None else self.training.device
        models = {run: _load_model(path, "iso", device) for run, path in self.inr_models.items()}
        filled, _ = restore_mod.fill_damage(
            region, mask, self.method, self.diffusion, voxel_size_nm=self.voxel,
            training=self.training, inr_models=models, only=own,
        )  # fmt: skip
        return filled[_local(box, region_box)]


def _gap_model(work: Work, run: int) -> Path:
    """Where the inr network for gaps of ``run`` slices is kept in the work folder."""
    return work.root / f"inr_gap{run}.pt"


def _check_good_slice(damaged: int, n_slices: int) -> None:
    if damaged == n_slices:
        raise VemvizError("every slice is marked damaged; there is no good slice to restore from")


def _undamaged_range(volume: Volume, damage_store: Path, runner: Runner) -> list[float]:
    """`vemviz.diffusion.intensity_range` of the volume's voxels outside the damage mask,
    streamed in slabs (the same value as in memory)."""
    from vemviz import diffusion

    undamaged = da.from_zarr(str(damage_store / "0")) == 0
    _, height, width = volume.shape
    tasks = []
    for z0, region in _slabs(volume):
        box = _box((z0, z0 + region.shape[0]), (0, height), (0, width))
        tasks.append(_CountsTask(region, np.arange(region.shape[0]), region_of(undamaged, box)))
    counts, value_range = _summed_counts(tasks, volume.dtype, runner, "inpaint")
    return list(diffusion.range_of_counts(counts, volume.dtype, value_range))


# --- learned stages: one model, trained once, applied by blocks ------------------------


@dataclass(frozen=True)
class Learned:
    """How a learned block stage gets its model: ``model`` (a saved file), or training with
    ``training`` (`vemviz.inr.Training`; default settings when None) on `training_slab`;
    ``save_model`` keeps a copy. Filled in during a run: ``norm``, the whole volume's intensity
    mean and std (`prepare`), and ``model_file``, the model the blocks load (`execute`)."""

    model: str | None = None
    save_model: str | None = None
    training: Any = None
    norm: tuple[float, float] | None = None
    model_file: str | None = None
    # (z, in-plane) voxels the model reads on each side (`vemviz.inr.reach`; iso: in-plane
    # also its neighbour planes' offsets)
    reach: tuple[int, int] = (0, 0)

    def device(self) -> str:
        return "auto" if self.training is None else self.training.device


def training_box(shape: tuple[int, int, int]) -> Box:
    """The central slab a learned stage trains on: the middle slices of the central
    `TRAINING_SLAB_SIDE` px square, as many as fit `TRAINING_SLAB_VOXELS` (at least 8)."""
    n_z, n_y, n_x = shape
    side_y, side_x = min(n_y, TRAINING_SLAB_SIDE), min(n_x, TRAINING_SLAB_SIDE)
    depth = min(n_z, max(8, TRAINING_SLAB_VOXELS // (side_y * side_x)))
    z0, y0, x0 = (n_z - depth) // 2, (n_y - side_y) // 2, (n_x - side_x) // 2
    return _box((z0, z0 + depth), (y0, y0 + side_y), (x0, x0 + side_x))


def training_slab(volume: Volume) -> np.ndarray:
    """The voxels of the volume's `training_box`."""
    return np.asarray(lazy(volume)[training_box(volume.shape)])


def _with_volume_norm(learned: Learned, volume: Volume, runner: Runner) -> Learned:
    data = lazy(volume).astype(np.float32)
    mean, std = runner.compute(data.mean(), data.std())
    return replace(learned, norm=(float(mean), float(std)))


def _provide_model(
    learned: Learned, kind: str, factor: float, volume: Volume, work: Work
) -> tuple[Learned, dict[str, Any]]:
    """``learned`` with ``model_file`` set to the work folder's model (written on the first
    run: the given model, or one trained on `training_slab`) and its ``reach``, and the
    training report."""
    from vemviz import inr
    from vemviz.io.atomic import atomic_path

    path = work.root / "model.pt"
    report: dict[str, Any] = {}
    if not path.is_file():
        if learned.model is not None:
            model = inr.load_model(learned.model, kind, "cpu")
        else:
            train = iso_mod.train_inr if kind == "iso" else inr.train_sr
            training = learned.training or inr.Training()
            model = train(training_slab(volume), factor, training, norm=learned.norm)
            report = inr.training_report(model)
        inr.save_model(model, path)
    if learned.save_model is not None:
        with atomic_path(learned.save_model) as temp:
            shutil.copyfile(path, temp)
        report["saved_model"] = learned.save_model
    model = _load_model(str(path), kind, learned.device())
    offsets = inr.neighbour_offsets(model) if kind == "iso" else np.zeros(1, int)
    reach = (inr.reach(model), inr.reach(model) + int(np.abs(offsets).max()))
    return replace(learned, model_file=str(path), reach=reach), report


def _with_model(stage: Any, kind: str, factor: float, volume: Volume, work: Work) -> Any:
    """A learned ``stage`` with the work folder's model; its training report goes to
    ``stage.trained``."""
    learned, trained = _provide_model(stage.learned, kind, factor, volume, work)
    object.__setattr__(stage, "trained", trained)
    return replace(stage, learned=learned)


@functools.lru_cache(maxsize=2)
def _load_model(path: str, kind: str, device: str) -> Any:
    from vemviz import inr

    return inr.load_model(path, kind, device)


def _applied_model(learned: Learned, kind: str) -> Any:
    """The work folder's model (loaded once per process) with the volume's normalisation."""
    assert learned.model_file is not None, "execute() sets the model file"
    model = _load_model(learned.model_file, kind, learned.device())
    model.norm = learned.norm
    return model


# --- iso --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FlowTask:
    """The first pass of learned iso: the flow interpolation (float32) of the synthesized
    slices of one slab of whole output planes, into the work folder's ``flow`` array."""

    region: da.Array
    region_box: Box
    box: Box
    positions: np.ndarray  # input z of the box's output slices
    store: Path
    marker: Path

    def __call__(self) -> int:
        region = read_region(self.region)
        local = self.positions - self.region_box[0].start
        synthesized = local != np.round(local)
        values = np.zeros((len(local), *region.shape[1:]), np.float32)
        if synthesized.any():
            values[synthesized] = iso_mod.interpolate_flow(region, local[synthesized])
        write_block(self.store, "flow", self.box, values)
        mark_done(self.marker)
        return int(values.size)


def _flow_store(work: Work) -> Path:
    """Where learned iso keeps its flow half in the work folder."""
    return work.root / "flow.zarr"


@dataclass(frozen=True)
class IsoBlocks(BlockStage):
    factor: float = 2.0
    method: str = iso_mod.DEFAULT_METHOD
    learned: Learned = field(default_factory=Learned)
    trained: dict[str, Any] = field(default_factory=dict, compare=False)
    flow_store: str | None = None  # inr: the first pass's output (set by execute)
    uncertainty: str | None = None  # inr: OME-Zarr path for the per-voxel uncertainty
    uncertainty_store: str | None = None  # its work-folder store and pyramid levels (execute)
    levels: int = 0
    name = "iso"

    def __post_init__(self) -> None:
        if not np.isfinite(self.factor) or self.factor < 1:
            raise VemvizError(f"--factor must be a number >= 1, got {self.factor}")

    @property
    def full_planes(self) -> bool:  # type: ignore[override]
        return self.method == "flow"

    @property
    def bytes_per_voxel(self) -> float:  # type: ignore[override]
        """Linear: float32 blend + output; cubic: spline coefficients; flow: float output;
        inr: the normalised slab, its XZ and YZ passes and their cubic bases, the flow half."""
        return {"linear": 8.0, "cubic": 24.0, "inr": 40.0}.get(self.method, 12.0)

    @property
    def bytes_per_plane_pixel(self) -> float:  # type: ignore[override]
        """Flow: up to three pairs of flows with their confidences and bends (measured)."""
        return 160.0 if self.method == "flow" else 0.0

    def prepare(self, volume: Volume, runner: Runner) -> IsoBlocks:
        if self.method != "inr":
            return self
        return replace(self, learned=_with_volume_norm(self.learned, volume, runner))

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        if self.method != "inr":
            return super().execute(volume, work, grid, runner)
        slabs = self.flow_slabs(volume.shape, work, runner)  # a plane too large fails here,
        stage = _with_model(self, "iso", self.factor, volume, work)  # before training
        flow = self.flow_pass(volume, work, slabs, runner)
        stage = replace(stage, flow_store=str(flow))
        store = work.root / "uncertainty.ome.zarr"
        if self.uncertainty is not None:
            if not store.exists():
                voxel = self.voxel_size(volume.voxel_size_nm)
                create_store(store, grid, np.dtype(np.float32), voxel, Path(self.uncertainty).name)
            stage = replace(stage, uncertainty_store=str(store), levels=grid.levels)
        computed = run_blocks(stage, volume, work, grid, runner)
        if self.uncertainty is not None:
            place(store, Path(self.uncertainty))
        return computed

    def flow_slabs(self, in_shape: tuple[int, int, int], work: Work, runner: Runner) -> Grid:
        """The flow half's slabs of whole output planes, planned from ``runner``'s memory budget
        and workers as for ``--method flow`` (its flows dominate: about 160 B per plane pixel
        and worker); a resumed run keeps the slabs it started with."""
        flow = IsoBlocks(self.factor, "flow")
        store = _flow_store(work)
        if store.exists():
            chunks = zarr.open_group(str(store), mode="r")["flow"].chunks
            return Grid(flow.out_shape(in_shape), tuple(chunks))  # type: ignore[arg-type]
        return plan_grid(flow, in_shape, runner.memory_budget, runner.workers)

    def flow_pass(self, volume: Volume, work: Work, slabs: Grid, runner: Runner) -> Path:
        """The flow half of inr for every output slice, by ``slabs``, into the work folder."""
        flow = IsoBlocks(self.factor, "flow")
        shape = slabs.shape
        store = _flow_store(work)
        if not store.exists():
            group = zarr.open_group(str(store), mode="w")
            group.create_array("flow", shape=shape, dtype=np.float32, chunks=slabs.block,
                               fill_value=0)  # fmt: skip
        positions = iso_mod.output_positions(volume.shape[0], self.factor)
        data = lazy(volume)
        done = work.done("flow", len(slabs))
        tasks = []
        for i in (i for i in range(len(slabs)) if not done[i]):
            box = slabs.box(i)
            read = flow.source(box, volume.shape)
            tasks.append(_FlowTask(region_of(data, read), read, box, positions[box[0]], store,
                                   work.marker("flow", i)))  # fmt: skip
        runner.run(tasks, f"iso: flow half ({len(slabs) - len(tasks)} done before)")
        return store

    def report(self) -> dict[str, Any]:
        extra = {} if self.uncertainty is None else {"uncertainty": self.uncertainty}
        return {"method": self.method, **self.trained, **extra}

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return (len(iso_mod.output_positions(shape[0], self.factor)), shape[1], shape[2])

    def voxel_size(self, voxel: VoxelSize | None) -> VoxelSize | None:
        return None if voxel is None else iso_mod.iso_voxel_size(voxel, self.factor)

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        n_z = in_shape[0]
        positions = iso_mod.output_positions(n_z, self.factor)[box[0]]
        first, last = int(positions[0]), min(int(positions[-1]) + 1, n_z - 1)
        reach_z, reach = self.learned.reach if self.method == "inr" else (0, 0)
        cubic = max(_CUBIC_HALO, reach_z)
        halo = {"cubic": cubic, "flow": 1, "inr": cubic}.get(self.method, 0)
        low, high = max(first - halo, 0), min(last + 1 + halo, n_z)
        if high - low < 2:
            low = max(high - 2, 0)
        return (slice(low, high), *_grow(box, (0, reach, reach), in_shape)[1:])

    def compute(self, region: np.ndarray, region_box: Box, box: Box) -> np.ndarray:
        """The block's output slices from its slab, at its part of the whole volume's output
        positions counted from the slab's first slice. (A volume that ends where the slab ends
        has the same positions up to the block's last output: the slab reaches past it.)"""
        end = region_box[0].stop
        positions = iso_mod.output_positions(end, self.factor)[box[0]] - region_box[0].start
        if self.method == "inr":
            assert self.flow_store is not None, "execute() runs the flow pass first"
            synthesized = positions != np.round(positions)
            flow = read_box(Path(self.flow_store), "flow", (box[0], *region_box[1:]))
            result = iso_mod.resample_z(region, positions, "inr", flow=flow[synthesized],
                                        model=_applied_model(self.learned, "iso"))  # fmt: skip
            if self.uncertainty_store is not None:
                spread = result.uncertainty[(slice(None), *_local(box, region_box)[1:])]
                write_levels(Path(self.uncertainty_store), box, spread, False, self.levels)
            out = result.data
        else:
            out = iso_mod.resample_z(region, positions, self.method).data
        return out[(slice(None), *_local(box, region_box)[1:])]


# --- sr ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrBlocks(BlockStage):
    scale: float = 2.0
    method: str = "bicubic"
    value_range: tuple[float, float] | None = None
    learned: Learned = field(default_factory=Learned)
    trained: dict[str, Any] = field(default_factory=dict, compare=False)
    name = "sr"

    def __post_init__(self) -> None:
        if not np.isfinite(self.scale) or self.scale < 1 or self.scale != round(self.scale):
            raise VemvizError(
                f"chunked super-resolution needs an integer --scale, got {self.scale}"
            )

    @property
    def _s(self) -> int:
        return int(self.scale)

    @property
    def bytes_per_voxel(self) -> float:  # type: ignore[override]
        """Bicubic: float32 copies; learned: also the residual and the normalised slices."""
        return 24.0 if self.method == "learned" else 16.0

    @property
    def _halo(self) -> int:
        return max(_SR_HALO, self.learned.reach[1]) if self.method == "learned" else _SR_HALO

    def prepare(self, volume: Volume, runner: Runner) -> SrBlocks:
        data = lazy(volume)
        low, high = runner.compute(data.min(), data.max())
        stage = replace(self, value_range=(float(low), float(high)))
        if self.method != "learned":
            return stage
        return replace(stage, learned=_with_volume_norm(self.learned, volume, runner))

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        if self.method != "learned":
            return super().execute(volume, work, grid, runner)
        stage = _with_model(self, "sr", self.scale, volume, work)
        return run_blocks(stage, volume, work, grid, runner)

    def report(self) -> dict[str, Any]:
        return {"method": self.method, **self.trained}

    def describe(self) -> dict[str, Any]:
        plan = {"stage": self.name, "scale": self.scale, "method": self.method}
        if self.method == "learned":
            plan["learned"] = BlockStage.describe(self)["learned"]
        return plan

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return (shape[0], shape[1] * self._s, shape[2] * self._s)

    def voxel_size(self, voxel: VoxelSize | None) -> VoxelSize | None:
        return None if voxel is None else sr_mod.sr_voxel_size(voxel, self.scale)

    def unit(self) -> tuple[int, int, int]:
        return (1, self._s, self._s)

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        s = self._s
        spans = [
            (max(b.start // s - self._halo, 0), min(math.ceil(b.stop / s) + self._halo, n))
            for b, n in zip(box[1:], in_shape[1:], strict=True)
        ]
        return _box(_span(box[0]), *spans)

    def compute(self, region: np.ndarray, region_box: Box, box: Box) -> np.ndarray:
        assert self.value_range is not None, "prepare() sets the value range"
        guard = np.full((1, *region.shape[1:]), self.value_range[0], dtype=region.dtype)
        guard[0, 0, 0] = self.value_range[1]
        model = _applied_model(self.learned, "sr") if self.method == "learned" else None
        stack = np.concatenate([region, guard])
        out = sr_mod.super_resolve(stack, self.scale, self.method, model=model)[0][:-1]
        s = self._s
        y0, x0 = (b.start - r.start * s for b, r in zip(box[1:], region_box[1:], strict=True))
        return out[:, y0 : y0 + box[1].stop - box[1].start, x0 : x0 + box[2].stop - box[2].start]


# --- align: apply transforms ------------------------------------------------------------


@dataclass(frozen=True)
class AlignApplyBlocks(BlockStage):
    transforms: dict[str, Any] = field(default_factory=dict)
    order: int = 1
    name = "align-apply"
    full_planes = True
    bytes_per_voxel = 24.0

    def describe(self) -> dict[str, Any]:
        return {"stage": self.name, "order": self.order, "mode": self.transforms.get("mode")}

    def prepare(self, volume: Volume, runner: Runner) -> AlignApplyBlocks:
        if list(volume.shape) != list(self.transforms.get("shape", [])):
            raise VemvizError(
                f"the transforms were computed for shape {self.transforms.get('shape')}, "
                f"not {list(volume.shape)}"
            )
        return self

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        return box

    def compute(self, region: np.ndarray, region_box: Box, box: Box) -> np.ndarray:
        z0, z1 = _span(box[0])
        displacements = self.transforms.get("displacements")
        part = {
            **self.transforms,
            "shape": list(region.shape),
            "matrices": self.transforms["matrices"][z0:z1],
            "displacements": displacements[z0:z1] if displacements else None,
        }
        return align_mod.apply_transforms(region, part, order=self.order)


@dataclass(frozen=True)
class AlignBlocks(AlignApplyBlocks):
    """`align` by blocks: the sections are registered first (`align.register_sections`, its
    passes as tasks of one z chunk each on the runner's workers when the budget allows,
    `_sweep_run`), and the transforms kept in the work folder (a resumed run reuses them); the
    blocks then apply them as `AlignApplyBlocks` (linear)."""

    mode: str = "rigid"
    skip: tuple[int, ...] = ()
    smooth: float = 0.0
    registration: dict[str, Any] = field(default_factory=dict, compare=False)
    name = "align"

    def describe(self) -> dict[str, Any]:
        return {"stage": self.name, "mode": self.mode, "skip": list(self.skip),
                "smooth": self.smooth}  # fmt: skip

    def prepare(self, volume: Volume, runner: Runner) -> AlignBlocks:
        return self

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        from vemviz.io.atomic import write_json

        record = work.root / "alignment.json"
        if not record.is_file():
            source = _slice_source(volume, runner)
            registration = align_mod.register_sections(
                source, self.mode, self.skip, smooth=self.smooth, run=_sweep_run(source, runner)
            )
            write_json(record, registration)
        registration = json.loads(record.read_text())
        object.__setattr__(self, "registration", registration)
        stage = replace(self, transforms=registration["transforms"])
        return run_blocks(stage, volume, work, grid, runner)

    def report(self) -> dict[str, Any]:
        return self.registration


# --- segment: instance labels merged across blocks ---------------------------------------

_FACES = ("z0", "z1", "y0", "y1", "x0", "x1")


def _face_layers(labels: np.ndarray, region_box: Box, box: Box, shape: tuple[int, ...]) -> dict:
    """Per face with a neighbour: [outside layer, own boundary layer], outside first on '0'."""
    faces = {}
    for axis, name in enumerate("zyx"):
        lo, hi = box[axis].start, box[axis].stop
        for side, layers in ((0, (lo - 1, lo)), (1, (hi - 1, hi))):
            if layers[0] < 0 or layers[1] >= shape[axis]:
                continue
            index = [b for b in box]
            index[axis] = slice(layers[0], layers[1] + 1)
            faces[f"{name}{side}"] = labels[_local(tuple(index), region_box)]  # type: ignore[arg-type]
    return faces


@dataclass(frozen=True)
class _LabelTask:
    stage: SegmentBlocks
    region: Any
    region_box: Box
    box: Box
    shape: tuple[int, int, int]
    local_store: Path
    faces: Path
    marker: Path

    def __call__(self) -> int:
        region = read_region(self.region)
        labels = self.stage.labels(region)
        core = labels[_local(self.box, self.region_box)]
        write_block(self.local_store, "local", self.box, core)
        faces = _face_layers(labels, self.region_box, self.box, self.shape)
        with open(self.faces, "wb") as handle:
            np.savez_compressed(
                handle, count=np.uint64(labels.max()), core=np.unique(core), **faces
            )
        mark_done(self.marker)
        return int(core.size)


@dataclass(frozen=True)
class _ProbabilityTask:
    """The learned model's probabilities of ``box``, from the input read at ``read``."""

    stage: SegmentBlocks
    region: Any
    read: Box
    box: Box
    shape: tuple[int, int, int]
    store: Path
    marker: Path

    def __call__(self) -> int:
        region = read_region(self.region)
        values = segment_mod.predict_probabilities(
            region, self.stage.voxel, _network(self.stage.target, self.stage.model),
            value_range=self.stage.value_range, imaged=self.stage.imaged,
            origin=tuple(b.start for b in self.read), volume_shape=self.shape, area=self.box,
        )  # fmt: skip
        write_block(self.store, "p", self.box, values)
        mark_done(self.marker)
        return int(values.size)


@dataclass(frozen=True)
class _RelabelTask:
    local_store: Path
    store: Path
    box: Box
    table: np.ndarray
    marker: Path
    levels: int

    def __call__(self) -> int:
        local = read_box(self.local_store, "local", self.box)
        write_levels(self.store, self.box, self.table[local], True, self.levels)
        mark_done(self.marker)
        return int(local.size)


def _face_pairs(lower: np.ndarray, upper: np.ndarray) -> list[tuple[int, int]]:
    """Id pairs (lower block id, upper block id) that are one object across a face.

    ``lower`` holds the lower block's two layers, ``upper`` the upper block's, over the same
    voxels; pairs overlapping on at least half of the smaller cross-section are merged.
    """
    both = (lower > 0) & (upper > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(
        np.stack([lower[both], upper[both]]).astype(np.uint64), axis=1, return_counts=True
    )
    ids_a, area_a = np.unique(lower[lower > 0], return_counts=True)
    ids_b, area_b = np.unique(upper[upper > 0], return_counts=True)
    area_lower = dict(zip(ids_a.tolist(), area_a.tolist(), strict=True))
    area_upper = dict(zip(ids_b.tolist(), area_b.tolist(), strict=True))
    return [
        (int(a), int(b))
        for (a, b), c in zip(pairs.T.tolist(), counts.tolist(), strict=True)
        if c >= 0.5 * min(area_lower[a], area_upper[b])
    ]


@dataclass(frozen=True)
class _FacePairsTask:
    """The object pairs across the face between block ``lower`` and the next one along ``axis``."""

    lower: int
    upper: int
    axis: str
    face_files: tuple[Path, Path]

    def __call__(self) -> tuple[int, int, list[tuple[int, int]]]:
        with np.load(self.face_files[0]) as a, np.load(self.face_files[1]) as b:
            pairs = _face_pairs(a[f"{self.axis}1"], b[f"{self.axis}0"])
        return self.lower, self.upper, pairs


def merge_tables(
    grid: Grid, face_files: list[Path], runner: Runner
) -> tuple[list[np.ndarray], int]:
    """Per block a lookup table local id -> global id (0 stays 0), and the number of objects.

    The faces between neighbouring blocks are compared on the runner's workers.
    """
    counts = []
    for path in face_files:
        with np.load(path) as data:
            counts.append(int(data["count"]))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1]) + 1
    strides = np.array([np.prod(grid.counts[a + 1 :]) for a in range(3)], dtype=int)
    tasks = [
        _FacePairsTask(i, i + int(strides[axis]), name,
                       (face_files[i], face_files[i + int(strides[axis])]))
        for i in range(len(grid))
        for axis, name in enumerate("zyx")
        if grid.index(i)[axis] + 1 < grid.counts[axis]
    ]  # fmt: skip
    edges_a, edges_b = [], []
    for i, j, pairs in runner.run(tasks, "segment: matching objects across block faces"):
        for id_a, id_b in pairs:
            edges_a.append(offsets[i] + id_a)
            edges_b.append(offsets[j] + id_b)
    graph = coo_matrix(
        (np.ones(len(edges_a)), (np.array(edges_a, int), np.array(edges_b, int))),
        shape=(total, total),
    )
    _, component = connected_components(graph, directed=False)
    present = np.zeros(total, bool)
    for i, path in enumerate(face_files):
        with np.load(path) as data:
            core = data["core"].astype(np.int64)
        present[offsets[i] + core[core > 0]] = True
    # number components 1..N in order of their first (smallest) global id
    first = np.full(component.max() + 1, total, dtype=np.int64)
    ids = np.flatnonzero(present)
    np.minimum.at(first, component[ids], ids)
    used = np.flatnonzero(first < total)
    rank = np.zeros(component.max() + 1, dtype=np.uint32)
    rank[used[np.argsort(first[used])]] = np.arange(1, len(used) + 1, dtype=np.uint32)
    tables = []
    for i in range(len(face_files)):
        ids = np.arange(offsets[i] + 1, offsets[i + 1] + 1)
        tables.append(np.concatenate([[0], rank[component[ids]]]).astype(np.uint32))
    return tables, len(used)


THRESHOLD_BLOCK = (32, 512, 512)  # blocks of the streamed Otsu threshold (~8 M voxels each)


@dataclass(frozen=True)
class _SliceSpreadTask:
    """Per-slice standard deviation of a slab of whole slices, with its range."""

    z0: int
    region: Any

    def __call__(self) -> tuple[int, np.ndarray, float, float]:
        slab = read_region(self.region)
        spread = np.array([plane.std() for plane in slab])
        return self.z0, spread, float(slab.min()), float(slab.max())


@dataclass(frozen=True)
class _SmoothedTask:
    """The smoothed block's values on imaged slices: their (min, max), or their histogram."""

    region: Any
    region_box: Box
    box: Box
    imaged: np.ndarray  # per z slice of the box
    voxel: VoxelSize
    value_range: tuple[float, float] | None = None

    def __call__(self) -> tuple[float, float] | np.ndarray:
        region = read_region(self.region)
        smooth = segment_mod.smooth_mito(region, self.voxel)[_local(self.box, self.region_box)]
        values = smooth[self.imaged]
        if self.value_range is not None:
            return np.histogram(values, bins=256, range=self.value_range)[0]
        if values.size == 0:
            return (math.inf, -math.inf)
        return (float(values.min()), float(values.max()))


def _slabs(volume: Volume) -> list[tuple[int, Any]]:
    """(first slice, lazy region) of slabs of whole slices: whole input chunks along z (each
    decoded once), at most ~128 M voxels."""
    data, shape = lazy(volume), volume.shape
    planes = max(1, min(data.chunks[0][0], 2**27 // (shape[1] * shape[2])))
    return [
        (z, region_of(data, _box((z, min(z + planes, shape[0])), (0, shape[1]), (0, shape[2]))))
        for z in range(0, shape[0], planes)
    ]


def imaged_slices(volume: Volume, runner: Runner) -> np.ndarray:
    """`segment.imaged_slices` of a volume streamed in slabs on the runner."""
    tasks = [_SliceSpreadTask(z, region) for z, region in _slabs(volume)]
    spread = np.zeros(volume.shape[0])
    low, high = math.inf, -math.inf
    for z0, values, lo, hi in runner.run(tasks, "segment: slice spread"):
        spread[z0 : z0 + len(values)] = values
        low, high = min(low, lo), max(high, hi)
    return spread > 1e-3 * max(high - low, 1.0)


@dataclass(frozen=True)
class _CountsTask:
    """`intensity.value_counts` of the given slices of a slab (those of its voxels ``keep``
    marks), or their (min, max) when the dtype needs a range first."""

    region: Any
    slices: np.ndarray  # indices into the slab
    keep: Any = None  # lazy bool region: count only these voxels
    value_range: tuple[float, float] | None = None

    def __call__(self) -> np.ndarray | tuple[float, float]:
        values = read_region(self.region)[self.slices]
        if self.keep is not None:
            values = values[read_region(self.keep)[self.slices]]
        if self.value_range is None and not intensity.value_counts_exact(values.dtype):
            if values.size == 0:
                return math.inf, -math.inf
            return float(values.min()), float(values.max())
        return intensity.value_counts(values, self.value_range)


def intensity_range(volume: Volume, imaged: np.ndarray, runner: Runner) -> tuple[float, float]:
    """`segment.intensity_range` of a volume streamed in slabs on the runner (same value)."""
    chosen = segment_mod.normalisation_slices(imaged)
    tasks = []
    for z0, region in _slabs(volume):
        local = chosen[(chosen >= z0) & (chosen < z0 + region.shape[0])] - z0
        if len(local):
            tasks.append(_CountsTask(region, local))
    counts, value_range = _summed_counts(tasks, volume.dtype, runner, "segment")
    return intensity.range_from_counts(counts, volume.dtype, value_range)


def _summed_counts(
    tasks: list[_CountsTask], dtype: np.dtype, runner: Runner, stage: str
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The tasks' `intensity.value_counts` summed, and the (min, max) they were counted over
    (found first, in a pass of its own, for the types that need one; else None)."""
    value_range = None
    if not intensity.value_counts_exact(dtype):
        ranges = runner.run(tasks, f"{stage}: intensity range")
        value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
        tasks = [replace(task, value_range=value_range) for task in tasks]
    return np.sum(runner.run(tasks, f"{stage}: intensity histogram"), axis=0), value_range


def mito_threshold(volume: Volume, voxel: VoxelSize, runner: Runner) -> float:
    """Otsu's threshold of the smoothed volume over its imaged slices, as `segment_mito` has it.

    Streamed in bounded blocks on the runner: per-slice spread (which slices are imaged,
    `segment.imaged_slices`), then the smoothing of each `THRESHOLD_BLOCK` with a halo wider
    than the Gaussian (so its values equal the whole-volume smoothing) gives the range, then
    a 256-bin histogram over that range, from which Otsu's threshold is taken.
    """
    data, shape = lazy(volume), volume.shape
    imaged = imaged_slices(volume, runner)
    depth = [2 * math.ceil(min(12.0 / v, 4.0) * 4) + 1 for v in voxel]
    grid = Grid(shape, tuple(min(b, n) for b, n in zip(THRESHOLD_BLOCK, shape, strict=True)))

    tasks = []
    for box in (grid.box(i) for i in range(len(grid))):
        if imaged[box[0]].any():
            region_box = _grow(box, depth, shape)
            tasks.append(_SmoothedTask(region_of(data, region_box), region_box, box,
                                       imaged[box[0]], voxel))  # fmt: skip
    ranges = runner.run(tasks, "segment: smoothed range")
    value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    histograms = [replace(task, value_range=value_range) for task in tasks]
    counts = np.sum(runner.run(histograms, "segment: histogram"), axis=0)
    edges = np.linspace(*value_range, 257)
    centers = (edges[:-1] + edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centers)))


@dataclass(frozen=True)
class SegmentBlocks(BlockStage):
    target: str = "mito"
    voxel: VoxelSize | None = None
    halo_nm: float = 400.0
    threshold: float | None = None
    method: str = "classical"
    value_range: tuple[float, float] | None = None  # learned: the volume's intensity range
    imaged: np.ndarray | None = field(default=None, compare=False)  # learned: per slice
    model: str | None = None  # learned: a model file (`vemviz train-seg`), else the shipped one
    probabilities: str | None = None  # learned: OME-Zarr path for the probability volume
    prompts: dict[str, Any] | None = None  # points / boxes choosing objects (`read_prompts`)
    name = "segment"
    is_label = True
    bytes_per_voxel = 160.0
    objects: int = field(default=0, compare=False)
    selected: int = field(default=0, compare=False)  # of them, chosen by the prompts

    def __post_init__(self) -> None:
        if self.voxel is None:
            raise VemvizError(
                "segmentation needs the voxel size (sizes are in nm), and the input carries "
                "none: pass --voxel-size Z,Y,X in nm (for example --voxel-size 40,8,8)"
            )
        if self.method != "learned" and (self.model or self.probabilities) is not None:
            raise VemvizError("--model and --probabilities need the learned method")
        if self.probabilities is not None:
            check_output(Path(self.probabilities))

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint32)

    def describe(self) -> dict[str, Any]:
        return {"stage": self.name, "target": self.target, "voxel": list(self.voxel),
                "halo_nm": self.halo_nm, "method": self.method, "model": self.model,
                "prompts": self.prompts}  # fmt: skip

    def report(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.prompts is not None:
            extra["objects_selected"] = self.selected
        if self.probabilities is not None:
            extra["probabilities"] = self.probabilities
        return {"target": self.target, "objects": self.objects, "halo_nm": self.halo_nm,
                "threshold": self.threshold, **extra}  # fmt: skip

    def halo(self) -> tuple[int, int, int]:
        return tuple(max(1, math.ceil(self.halo_nm / v)) for v in self.voxel)  # type: ignore[return-value]

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        return _grow(box, self.halo(), in_shape)

    def prepare(self, volume: Volume, runner: Runner) -> SegmentBlocks:
        if self.prompts is not None:
            segment_mod.check_prompts(self.prompts, volume.shape)
        if self.method == "learned":
            if self.value_range is not None:
                return self
            _network(self.target, self.model)  # a wrong or unreadable model fails here
            imaged = imaged_slices(volume, runner)
            if not imaged.any():
                raise VemvizError("the volume is blank (every slice constant): nothing to segment")
            return replace(self, imaged=imaged, value_range=intensity_range(volume, imaged, runner))
        if self.target != "mito" or self.threshold is not None:
            return self
        return replace(self, threshold=mito_threshold(volume, self.voxel, runner))

    def labels(self, region: np.ndarray) -> np.ndarray:
        """Labels of a block's region: from the image (classical) or from the probabilities
        that the learned model gave it (`probabilities`)."""
        if self.method == "learned":
            labels = segment_mod.instances_from_probabilities(region, self.voxel, self.target)
            return labels.astype(np.uint32)
        options = {} if self.threshold is None else {"threshold": self.threshold}
        return segment_mod.segment(region, self.voxel, self.target, **options)[0].astype(np.uint32)

    def predict(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> Volume:
        """The learned model's probabilities of the whole volume, by blocks, in the work folder.

        Each tile of the network's grid is predicted once where possible: for XY-only
        prediction (anisotropic voxels) the blocks are slabs of whole planes; for three
        orientations they are the label ``grid``'s blocks, whose border tiles are predicted by
        both neighbours.
        """
        network = _network(self.target, self.model)
        shape = volume.shape
        if segment_mod.plane_axes(self.voxel, shape) == (0,):
            depth = max(1, int(np.prod(grid.block)) // (shape[1] * shape[2]))
            grid = Grid(shape, (min(depth, shape[0]), shape[1], shape[2]))
        store = work.root / "probabilities.zarr"
        if not store.exists():
            group = zarr.open_group(str(store), mode="w")
            group.create_array("p", shape=shape, dtype=np.float32, chunks=grid.block, fill_value=0)
        data = lazy(volume)
        done = work.done("probabilities", len(grid))
        tasks = []
        for i in (i for i in range(len(grid)) if not done[i]):
            box = grid.box(i)
            read = segment_mod.prediction_box(box, self.voxel, shape, network)
            tasks.append(_ProbabilityTask(self, region_of(data, read), read, box, shape, store,
                                          work.marker("probabilities", i)))  # fmt: skip
        runner.run(tasks, f"segment: probabilities ({len(grid) - len(tasks)} done before)")
        return volume.with_data(da.from_zarr(str(store / "p")), stage="probabilities")

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        local = work.root / "local.zarr"
        if not local.exists():
            group = zarr.open_group(str(local), mode="w")
            group.create_array(
                "local", shape=grid.shape, dtype=np.uint32, chunks=grid.chunks(), fill_value=0
            )
        faces = work.root / "faces"
        faces.mkdir(exist_ok=True)
        if self.method == "learned":
            volume = self.predict(volume, work, grid, runner)
        tasks = [
            _LabelTask(self, region, region_box, box, volume.shape, local, faces / f"{i}.npz",
                       work.marker("blocks", i))
            for i, box, region_box, region in pending_blocks(self, volume, work, grid)
        ]  # fmt: skip
        runner.run(tasks, f"segment: blocks ({len(grid) - len(tasks)} done before)")
        face_files = [faces / f"{i}.npz" for i in range(len(grid))]
        tables, objects = merge_tables(grid, face_files, runner)
        try:
            tables, selected = self.final_ids(tables, objects, local, grid)
        except VemvizError:
            shutil.rmtree(work.root, ignore_errors=True)  # an empty result: nothing to resume
            raise
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "selected", selected)
        if self.probabilities is not None:
            write_volume(volume, self.probabilities)
        done = work.done("relabel", len(grid))
        relabel = [
            _RelabelTask(
                local, work.store, grid.box(i), tables[i], work.marker("relabel", i), grid.levels
            )
            for i in range(len(grid))
            if not done[i]
        ]
        runner.run(relabel, "segment: relabelling blocks")
        return len(tasks)

    def final_ids(
        self, tables: list[np.ndarray], objects: int, local: Path, grid: Grid
    ) -> tuple[list[np.ndarray], int]:
        """The blocks' tables to final ids, and how many there are: every object, or those
        the prompts choose (`segment.prompted_objects`, read from the blocks' planes) numbered
        1..K. No object is an error."""
        if objects == 0:
            raise VemvizError(f"segmentation found no {self.target} objects; nothing written")
        if self.prompts is None:
            return tables, objects
        plane = functools.partial(_plane_labels, local, grid, tables)
        keep = segment_mod.prompted_objects(plane, grid.shape, self.prompts)
        select = np.zeros(objects + 1, np.uint32)
        select[keep] = np.arange(1, len(keep) + 1, dtype=np.uint32)
        return [select[table] for table in tables], len(keep)


def _plane_labels(local: Path, grid: Grid, tables: list[np.ndarray], z: int) -> np.ndarray:
    """Slice ``z`` of the labels numbered across blocks, from the blocks' own ids."""
    ids = zarr.open_array(str(local / "local"), mode="r")
    plane = np.zeros(grid.shape[1:], np.uint32)
    for i in range(len(grid)):
        zs, ys, xs = grid.box(i)
        if zs.start <= z < zs.stop:
            plane[ys, xs] = tables[i][ids[z, ys, xs]]
    return plane


def _slice_source(volume: Volume, runner: Runner, transforms: dict[str, Any] | None = None):
    """The volume's slices one at a time (`vemviz.slices.SliceSource`, aligned by
    ``transforms`` if given), for passes run as tasks on the ``runner``'s workers: each task
    keeps two slabs of at most 1/4 of the memory budget per worker."""
    from vemviz.slices import SliceSource

    slab_bytes = runner.memory_budget // (4 * runner.workers)
    return SliceSource.aligned(lazy(volume), transforms, slab_bytes=slab_bytes)


def _sweep_run(source: Any, runner: Runner) -> Any:
    """How the passes of registration and detection over ``source``'s slices run: as chunk
    tasks on the ``runner``'s workers (`Runner.run`) when all workers' steps fit the budget's
    whole-plane allowance, else one slice at a time in this process (None), with a note."""
    plane = source.shape[1] * source.shape[2]
    need = runner.workers * SWEEP_BYTES_PER_PLANE_PIXEL * plane
    if need <= WHOLE_PLANE_ALLOWANCE * runner.memory_budget:
        return runner.run
    status(f"note: {runner.workers} workers' passes over {source.shape[1]} x {source.shape[2]} "
           f"px slices would need about {need / 2**20:,.0f} MiB; they run one slice at a time "
           "in this process")  # fmt: skip
    return None


@functools.lru_cache(maxsize=2)
def _network(target: str, model: str | None) -> Any:
    """The segmentation network (`unet.segmentation_model`), loaded once per process."""
    from vemviz.unet import segmentation_model

    return segmentation_model(target, None if model is None else Path(model))
