"""The stages of the VEM chain as functions on `Volume` objects.

Each function takes a `Volume` (and the stage's options), calls the pure array algorithm of
its module (`vemviz.stitch`, `align`, `restore`, `iso`, `sr`, `segment`, `mesh`) with the voxel
size, and returns the new `Volume` with its voxel size updated, plus a JSON-serialisable report.
The CLI commands and the pipeline both call these functions, so a stage behaves identically
whether it is run by hand or from a pipeline file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vemviz import align as align_mod
from vemviz import iso as iso_mod
from vemviz import reimage as reimage_mod
from vemviz import restore as restore_mod
from vemviz import segment as segment_mod
from vemviz import sr as sr_mod
from vemviz import stitch as stitch_mod
from vemviz.errors import VemvizError
from vemviz.io import write_volume
from vemviz.progress import status
from vemviz.volume import Volume

Report = dict[str, Any]


def stitch(
    tile_dir: Path,
    *,
    grid: tuple[int, int] | None = None,
    overlap: float = 0.1,
    elastic: bool = True,
) -> tuple[Volume, Report]:
    """Stitch a tile folder (``*_ROW_COL`` names) or a CSV tile list into a one-slice volume."""
    tile_dir = Path(tile_dir)
    if tile_dir.suffix.lower() == ".csv":
        tiles, positions = stitch_mod.read_tile_list(tile_dir)
        image, report = stitch_mod.stitch_tiles(
            tiles, overlap_hint=overlap, positions=positions, elastic=elastic
        )
    else:
        grid_tiles = stitch_mod.read_tile_grid(tile_dir, grid)
        image, report = stitch_mod.stitch_tiles(grid_tiles, overlap_hint=overlap, elastic=elastic)
    for warning in report["warnings"]:
        status(f"warning: {warning}")
    return Volume(image[np.newaxis], None, {"source": str(tile_dir), "stage": "stitch"}), report


def align(
    volume: Volume, *, mode: str = "rigid", skip: tuple[int, ...] = (), smooth: float = 0.0
) -> tuple[Volume, Report]:
    aligned, report = align_mod.align_stack(volume.numpy(), mode=mode, skip=skip, smooth=smooth)
    return volume.with_data(aligned, stage="align"), report


def apply_alignment(
    volume: Volume, transforms: dict[str, Any], *, order: int = 0
) -> tuple[Volume, Report]:
    """Re-apply saved alignment transforms (order 0 = nearest, exact for label volumes)."""
    out = align_mod.apply_transforms(volume.numpy(), transforms, order=order)
    report = {"applied_mode": transforms.get("mode"), "order": order}
    return volume.with_data(out, stage="align"), report


def damage_mask(
    volume: Volume,
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    mask: np.ndarray | None = None,
    transforms: dict[str, Any] | None = None,
) -> tuple[np.ndarray, Report]:
    """The voxels to restore: given whole ``slices``, a given ``mask`` and/or detected damage;
    never the padding of an aligned stack when its alignment ``transforms`` are given."""
    stack = volume.numpy()
    if not detect and mask is None and not slices:
        raise VemvizError(
            "nothing to inpaint: pass --slices 3,17,40-42, --mask MASK and/or --detect"
        )
    report: Report = {}
    outside = None if transforms is None else ~align_mod.section_masks(transforms, stack.shape)
    damaged = np.zeros(stack.shape, dtype=bool)
    if mask is not None:
        damaged |= restore_mod.check_mask(stack, mask)
    damaged[list(slices)] = True
    if detect:
        report["detection"], detected = restore_mod.detect_damage(stack, outside)
        damaged |= detected
    if outside is not None:
        damaged &= ~outside
        report["outside_voxels"] = int(outside.sum())
    return damaged, report


def inpaint(
    volume: Volume,
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    method: str = "auto",
    mask: np.ndarray | None = None,
    steps: int = 1,
    samples: int = 1,
    seed: int = 0,
    fine_tune: int = 0,
    weights: str | None = None,
    device: str = "auto",
    time_budget: float | None = None,
    transforms: dict[str, Any] | None = None,
) -> tuple[Volume, Report]:
    """Restore the given slices, the voxels of a given mask and/or the detected damage
    (``time_budget``: training seconds per gap length for ``method`` inr or ensemble;
    ``transforms``: the alignment that produced ``volume``, whose padding is left alone)."""
    damaged, report = damage_mask(
        volume, slices=slices, detect=detect, mask=mask, transforms=transforms
    )
    report["method"] = method
    options, training = _fill_options(method, steps, samples, seed, fine_tune, weights, device,
                                      time_budget)  # fmt: skip
    filled, fill_report = restore_mod.fill_damage(
        volume.numpy(), damaged, method, options, voxel_size_nm=volume.voxel_size_nm,
        training=training,
    )  # fmt: skip
    report.update(fill_report)
    report["filled"] = sorted(fill_report["methods"])
    report["damaged_voxels"] = int(damaged.sum())
    return volume.with_data(filled, stage="inpaint"), report


def _fill_options(
    method: str, steps: int, samples: int, seed: int, fine_tune: int, weights: str | None,
    device: str, time_budget: float | None,
) -> tuple[restore_mod.DiffusionOptions, Any]:  # fmt: skip
    """How `inpaint`'s fills run: the diffusion model's options, and the inr's training where
    ``method`` trains it (else None)."""
    options = restore_mod.DiffusionOptions(
        Path(weights) if weights else None, steps, samples, seed, fine_tune, device
    )
    learns = method in restore_mod.INR_METHODS
    return options, _training(time_budget, device, seed) if learns else None


def _training(time_budget: float | None, device: str, seed: int, default: float | None = None):
    """`vemviz.inr.Training` with the given budget, else ``default``, else Training's own."""
    from vemviz.inr import Training

    if time_budget is not None and not time_budget > 0:
        raise VemvizError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    time_budget = default if time_budget is None else time_budget
    budget = {} if time_budget is None else {"time_budget": float(time_budget)}
    return Training(device=device, seed=int(seed), **budget)


def _learned_model(path: str | Path | None, kind: str, device: str, factor: float):
    """The saved ``kind`` model at ``path`` (None without one); says so when it was trained
    for another factor than ``factor`` (the decoder takes any, but it learned one)."""
    if path is None:
        return None
    from vemviz.inr import load_model

    model = load_model(Path(path), kind, device)
    if not np.isclose(model.factor, factor, rtol=1e-3):
        status(f"note: {path} was trained for x{model.factor:g} and is applied at x{factor:g}; "
               "results are best at the factor it learned")  # fmt: skip
    return model


def _learned_report(model: Any, save_model: str | Path | None) -> Report:
    from vemviz.inr import save_model as save
    from vemviz.inr import training_report

    if save_model is not None:
        save(model, Path(save_model))
    saved = None if save_model is None else str(save_model)
    return {**training_report(model), "saved_model": saved}


def iso(
    volume: Volume,
    *,
    factor: float | None = None,
    out_voxel_size: float | None = None,
    method: str = iso_mod.DEFAULT_METHOD,
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
    model: str | Path | None = None,
    save_model: str | Path | None = None,
    uncertainty: str | Path | None = None,
) -> tuple[Volume, Report]:
    """Resample along z by ``factor`` or to ``out_voxel_size`` nm (output slice i*F sits at
    input slice i). ``inr`` trains on the volume (or uses ``model``) and can save its weights
    and write its per-voxel uncertainty volume."""
    voxel = volume.require_voxel_size("isotropic reconstruction")
    factor = _iso_factor(volume, factor, out_voxel_size, method, (model, save_model, uncertainty))
    result = iso_mod.reconstruct_z(
        volume.numpy(), factor, method=method,
        model=_learned_model(model, "iso", device, factor),
        training=_training(time_budget, device, seed, iso_mod.DEFAULT_TIME_BUDGET)
        if method == "inr" else None,
    )  # fmt: skip
    report: Report = {
        "method": method,
        "factor": factor,
        "slices_in": volume.shape[0],
        "slices_out": result.data.shape[0],
    }
    out_voxel = iso_mod.iso_voxel_size(voxel, factor)
    if result.model is not None:
        report.update(_learned_report(result.model, save_model))
    if uncertainty is not None and result.uncertainty is not None:
        write_volume(Volume(result.uncertainty, out_voxel, {"stage": "iso-uncertainty"}),
                     Path(uncertainty))  # fmt: skip
        report["uncertainty"] = str(uncertainty)
    return volume.with_data(result.data, out_voxel, stage="iso"), report


def _iso_factor(
    volume: Volume,
    factor: float | None,
    out_voxel_size: float | None,
    method: str,
    inr_options: tuple[Any, ...],
) -> float:
    """The z factor asked for by ``factor`` or ``out_voxel_size``; the inr-only options
    (model, save_model, uncertainty) must be None for another method."""
    voxel = volume.require_voxel_size("isotropic reconstruction")
    if (factor is None) == (out_voxel_size is None):
        raise VemvizError("give exactly one of --factor and --out-voxel-size")
    if method != "inr" and any(option is not None for option in inr_options):
        raise VemvizError("--model, --save-model and --uncertainty need --method inr")
    if out_voxel_size is not None:
        return iso_mod.factor_for_spacing(voxel, out_voxel_size)
    return float(factor)  # type: ignore[arg-type]


# Stages whose result is larger than their input: blocks also when the result would exceed
# the budget in memory.
GROWING_STAGES = ("iso", "sr")


def block_stage(name: str, volume: Volume, options: dict[str, Any]):
    """Stage ``name`` (`align`, `apply_alignment`, `iso`, `sr`, `inpaint`, `segment`, with its
    keyword ``options``) as a block stage (`vemviz.blockwise`), or None where those options have no
    block path: inpaint with a mask given as an array (`inpaint_blocks`), and segmentation
    with a probability output other than OME-Zarr."""
    from vemviz import blockwise

    if name == "iso":
        return iso_blocks(volume, **options)
    if name == "sr":
        return sr_blocks(volume, **options)
    if name == "inpaint":
        return inpaint_blocks(**options)
    if name == "segment":
        probabilities = options.get("probabilities")
        if probabilities is not None and Path(probabilities).suffix.lower() != ".zarr":
            return None  # a probability TIFF is written from memory
        model = options.get("model")
        return blockwise.SegmentBlocks(
            options.get("target", "mito"), volume.voxel_size_nm,
            method=options.get("method", "learned"), model=model and str(model),
            probabilities=probabilities and str(probabilities), prompts=options.get("prompts"),
        )  # fmt: skip
    if name == "align":
        return blockwise.AlignBlocks(mode=options.get("mode", "rigid"),
                                     skip=tuple(options.get("skip", ())),
                                     smooth=options.get("smooth", 0.0))  # fmt: skip
    if name == "apply_alignment":
        return blockwise.AlignApplyBlocks(options["transforms"], order=options.get("order", 0))
    return None


def choose_blocks(
    name: str, volume: Volume, options: dict[str, Any], memory_budget: int,
    scheduler: str | None = None,
):  # fmt: skip
    """The block stage to run stage ``name`` with (`block_stage`), or None to run it in memory.

    Blocks when the volume is over ``memory_budget`` bytes or a dask ``scheduler`` is given;
    for the `GROWING_STAGES` also when their result and its working arrays (the stage's bytes
    per output voxel) would be, where the options allow blocks. Options without a block path
    run in memory, with a note when blocks were due.
    """
    over = volume.nbytes > memory_budget
    if over or scheduler is not None:
        stage = block_stage(name, volume, options)
        if stage is None:
            status(f"note: {name} runs in memory (these options have no block path); the whole "
                   f"volume ({volume.nbytes / 2**20:,.0f} MiB) is loaded"
                   + (", above the memory budget" if over else "")
                   + (", not sent to the scheduler" if scheduler is not None else ""))  # fmt: skip
        return stage
    if name not in GROWING_STAGES:
        return None
    try:
        stage = block_stage(name, volume, options)
    except VemvizError:  # not possible by blocks (e.g. an uncertainty to TIFF): in memory
        return None
    need = volume.nbytes + math.prod(stage.out_shape(volume.shape)) * stage.bytes_per_voxel
    if need <= memory_budget:
        return None
    status(f"the result needs about {need / 2**30:.1f} GiB in memory, more than the memory "
           "budget: running block by block")  # fmt: skip
    return stage


def inpaint_blocks(
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    method: str = "auto",
    mask: str | Path | np.ndarray | None = None,
    transforms: dict[str, Any] | None = None,
    mask_out: str | Path | None = None,
    steps: int = 1,
    samples: int = 1,
    seed: int = 0,
    fine_tune: int = 0,
    weights: str | None = None,
    device: str = "auto",
    time_budget: float | None = None,
):
    """`inpaint` as a block stage (`vemviz.blockwise.InpaintBlocks`), ``mask`` a volume file
    and ``mask_out`` an OME-Zarr path for the damage mask used (``time_budget``: the inr
    fills' training seconds per gap length); None for a mask given as an array."""
    from vemviz.blockwise import InpaintBlocks
    from vemviz.chunked import check_output

    restore_mod.check_fill_method(method)
    if isinstance(mask, np.ndarray):
        return None
    if mask_out is not None:
        check_output(Path(mask_out))
    options, training = _fill_options(method, steps, samples, seed, fine_tune, weights, device,
                                      time_budget)  # fmt: skip
    return InpaintBlocks(
        tuple(slices), method, detect, None if mask is None else str(mask), transforms,
        None if mask_out is None else str(mask_out), options, training,
    )  # fmt: skip


def iso_blocks(
    volume: Volume,
    *,
    factor: float | None = None,
    out_voxel_size: float | None = None,
    method: str = iso_mod.DEFAULT_METHOD,
    uncertainty: str | Path | None = None,
    **learned: Any,
):
    """`iso` as a block stage (`vemviz.blockwise.IsoBlocks`) for volumes larger than memory;
    ``learned`` takes `iso`'s inr options (time_budget, device, seed, model, save_model); the
    inr ``uncertainty`` is then written block by block too, as OME-Zarr."""
    from vemviz.blockwise import IsoBlocks
    from vemviz.chunked import check_output

    inr_options = (learned.get("model"), learned.get("save_model"), uncertainty)
    factor = _iso_factor(volume, factor, out_voxel_size, method, inr_options)
    if method != "inr":
        return IsoBlocks(factor, method)
    if uncertainty is not None:
        check_output(Path(uncertainty))
    return IsoBlocks(factor, method, _learned_blocks("iso", factor, **learned),
                     uncertainty=None if uncertainty is None else str(uncertainty))  # fmt: skip


def _learned_blocks(
    kind: str,
    factor: float,
    *,
    model: str | Path | None = None,
    save_model: str | Path | None = None,
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
):
    """The model options of a learned block stage (`vemviz.blockwise.Learned`); a given model
    is checked (its kind, and a note when it learned another factor) before any block runs."""
    from vemviz.blockwise import Learned

    _learned_model(model, kind, device, factor)
    default = iso_mod.DEFAULT_TIME_BUDGET if kind == "iso" else None
    return Learned(
        model=None if model is None else str(model),
        save_model=None if save_model is None else str(save_model),
        training=_training(time_budget, device, seed, default),
    )


def sr(
    volume: Volume,
    *,
    scale: float,
    method: str = "bicubic",
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
    model: str | Path | None = None,
    save_model: str | Path | None = None,
) -> tuple[Volume, Report]:
    """Lateral (x, y) super-resolution by ``scale``; ``learned`` trains on the volume itself
    (or uses ``model``) and can save its weights."""
    voxel = volume.require_voxel_size("super-resolution")
    _check_sr_options(method, model, save_model)
    out, trained = sr_mod.super_resolve(
        volume.numpy(), scale, method=method,
        model=_learned_model(model, "sr", device, scale),
        training=_training(time_budget, device, seed) if method == "learned" else None,
    )  # fmt: skip
    report: Report = {"method": method, "scale": scale, "shape_out": list(out.shape)}
    if trained is not None:
        report.update(_learned_report(trained, save_model))
    return volume.with_data(out, sr_mod.sr_voxel_size(voxel, scale), stage="sr"), report


def _check_sr_options(method: str, model: Any, save_model: Any) -> None:
    if method != "learned" and (model, save_model) != (None, None):
        raise VemvizError("--model and --save-model need --method learned")


def sr_blocks(volume: Volume, *, scale: float, method: str = "bicubic", **learned: Any):
    """`sr` as a block stage (`vemviz.blockwise.SrBlocks`) for volumes larger than memory;
    ``learned`` takes `sr`'s learned options (time_budget, device, seed, model, save_model)."""
    from vemviz.blockwise import SrBlocks

    volume.require_voxel_size("super-resolution")
    _check_sr_options(method, learned.get("model"), learned.get("save_model"))
    if method != "learned":
        return SrBlocks(scale, method)
    return SrBlocks(scale, method, learned=_learned_blocks("sr", scale, **learned))


def segment(
    volume: Volume,
    *,
    target: str = "mito",
    prompts: dict[str, Any] | None = None,
    model: Path | None = None,
    method: str = "learned",
    probabilities: Path | None = None,
) -> tuple[Volume, Report]:
    """Instance labels (uint32) for ``target``; prompts select objects under points/boxes.

    ``method="learned"`` uses ``model`` or the weights shipped for ``target``; the probability
    volume is written to ``probabilities`` when given. An empty result is an error, so no empty
    label (or probability) file is ever written.
    """
    labels, report, probability = _segment_labels(volume, target, model, method, probabilities)
    if prompts is not None:
        labels = segment_mod.select_by_prompts(labels, prompts)
        report["objects_selected"] = int(labels.max())
    if labels.max() == 0:
        raise VemvizError(f"segmentation found no {target} objects; nothing written")
    if probability is not None and probabilities is not None:
        write_volume(volume.with_data(probability, stage="probabilities"), probabilities)
        report["probabilities"] = str(probabilities)
    report["target"] = target
    return volume.with_data(labels, stage="segment", target=target), report


def _segment_labels(
    volume: Volume, target: str, model: Path | None, method: str, probabilities: Path | None
) -> tuple[np.ndarray, Report, np.ndarray | None]:
    """Labels (possibly none), report and probability volume of `segment`."""
    voxel = volume.require_voxel_size("segmentation (sizes are in nm)")
    if method == "classical":
        if model is not None or probabilities is not None:
            raise VemvizError("--model and --probabilities need the learned method")
        labels, report = segment_mod.segment(volume.numpy(), voxel, target)
        probability = None
    elif method == "learned":
        from vemviz.unet import segmentation_model

        network = segmentation_model(target, model)
        labels, report, probability = segment_mod.segment_learned(volume.numpy(), voxel, network)
    else:
        raise VemvizError(f"unknown segmentation method {method!r}; choose learned or classical")
    return labels, report, probability


def _segmenter(target: str | None, voxel_size_nm: tuple[float, float, float]):
    """An array -> probability function (the shipped ``target`` model) for `reimage.assess`,
    or None without a target."""
    if target is None:
        return None
    if target not in segment_mod.TARGETS:
        raise VemvizError(f"unknown segmentation target {target!r}; choose mito or cells")
    from vemviz.unet import segmentation_model

    network = segmentation_model(target)

    def probability(data: np.ndarray) -> np.ndarray:
        return segment_mod.predict_probabilities(data, voxel_size_nm, network)

    return probability


def plan_reimage(
    volume: Volume,
    *,
    scale: int = 4,
    budget: float = 0.1,
    tile: int = 128,
    margin: int = 8,
    sr_method: str = "bicubic",
    target: str | None = None,
    dwell_ns: float | None = None,
    tile_overhead_s: float = 0.0,
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
) -> tuple[dict[str, Any], Volume]:
    """The re-imaging plan for a low-resolution scan, and its super-resolved volume
    (``time_budget``, ``device``, ``seed``: training of a learned ``sr_method``)."""
    voxel = volume.require_voxel_size("re-imaging plans (tile positions are in nm)")
    hr_voxel = sr_mod.sr_voxel_size(voxel, scale)
    assessment = reimage_mod.assess(
        volume.numpy(), voxel, scale=scale, tile=tile, sr_method=sr_method,
        segmenter=_segmenter(target, hr_voxel),
        training=_training(time_budget, device, seed) if sr_method == "learned" else None,
    )  # fmt: skip
    plan = reimage_mod.make_plan(
        assessment, budget=budget, margin=margin, dwell_ns=dwell_ns,
        tile_overhead_s=tile_overhead_s,
    )  # fmt: skip
    plan["target"] = target
    return plan, volume.with_data(assessment.sr, hr_voxel, stage="sr")


def simulate_reimage(
    volume: Volume, merge_options: dict[str, Any] | None = None, **options: Any
) -> tuple[dict[str, Any], Volume, Report]:
    """The re-imaging loop on a high-resolution ``volume`` taken as the truth.

    The low-resolution scan is its area downsampling; the re-imaged tiles are cut from it with
    a 2-pixel stage error. ``options`` go to `plan_reimage`, ``merge_options`` to
    `merge_reimage`. Returns the plan, the merged volume and the quality report.
    """
    merge_options = merge_options or {}
    from vemviz.metrics import psnr, ssim_slices

    voxel = volume.require_voxel_size("re-imaging plans (tile positions are in nm)")
    truth = volume.numpy()
    scale = int(options.get("scale", 4))
    low = reimage_mod.area_downsample(truth, scale)
    low_volume = Volume(low, (voxel[0], voxel[1] * scale, voxel[2] * scale))
    plan, sr_volume = plan_reimage(low_volume, **options)
    tiles = reimage_mod.truth_tiles(truth, plan, stage_error_px=2.0)
    merged, report = merge_reimage(low_volume, plan, tiles, sr_volume=sr_volume, **merge_options)
    ref = truth[:, : merged.shape[1], : merged.shape[2]]
    report.update(
        sr_psnr=psnr(ref, sr_volume.numpy()), merged_psnr=psnr(ref, merged.numpy()),
        sr_ssim=ssim_slices(ref, sr_volume.numpy()), merged_ssim=ssim_slices(ref, merged.numpy()),
        time=plan["time"], tiles=len(plan["tiles"]), tiles_total=plan["tiles_total"],
    )  # fmt: skip
    return plan, merged.with_data(merged.numpy(), voxel), report


def read_reimage_plan(path: Path) -> dict[str, Any]:
    import json

    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise VemvizError(f"plan not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise VemvizError(f"{path} is not a re-imaging plan (invalid JSON: {exc})") from exc
    if plan.get("version") != reimage_mod.PLAN_VERSION or "tiles" not in plan:
        raise VemvizError(f"{path} is not a version-{reimage_mod.PLAN_VERSION} re-imaging plan")
    return plan


def write_plan_sr(plan: dict[str, Any], sr_volume: Volume, path: Path) -> None:
    """Write the plan's super-resolved volume to ``path`` and name it in the plan, with the
    `reimage.fingerprint` of what was written (as read back: a format may change the dtype)."""
    from vemviz.io import read_volume, write_volume

    write_volume(sr_volume, path)
    plan["sr_volume"] = str(Path(path).resolve())
    plan["sr_volume_sha256"] = reimage_mod.fingerprint(read_volume(path).numpy())


def read_plan_sr(plan: dict[str, Any]) -> Volume | None:
    """The SR volume the plan wrote, or None when there is none, it is gone, or it was replaced
    since (a note says so; `merge_reimage` then super-resolves the scan again)."""
    from vemviz.io import read_volume

    path = plan.get("sr_volume")
    if not path or not Path(path).exists():
        return None
    volume = read_volume(path)
    if reimage_mod.fingerprint(volume.numpy()) != plan.get("sr_volume_sha256"):
        status(f"note: {path} is not the SR volume this plan wrote; super-resolving again")
        return None
    return volume


def read_reimaged_tiles(tiles_dir: Path, plan: dict[str, Any]) -> list[np.ndarray]:
    """The plan's tiles from ``tiles_dir`` (``tile_00000.tif`` ...; .png accepted too)."""
    from vemviz.io import read_volume

    tiles = []
    for entry in plan["tiles"]:
        path = Path(tiles_dir) / entry["file"]
        if not path.exists() and path.with_suffix(".png").exists():
            path = path.with_suffix(".png")
        if not path.exists():
            raise VemvizError(f"re-imaged tile {entry['file']} (rank {entry['rank']}) is missing "
                              f"from {tiles_dir}")  # fmt: skip
        data = read_volume(path).numpy()
        if data.shape[0] != 1:
            raise VemvizError(f"{path} holds {data.shape[0]} slices; a tile is one 2D image")
        tiles.append(data[0])
    return tiles


def merge_reimage(
    low: Volume,
    plan: dict[str, Any],
    tiles: list[np.ndarray],
    *,
    sr_volume: Volume | None = None,
    refit: bool = True,
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
) -> tuple[Volume, Report]:
    """Blend re-imaged tiles into the super-resolved scan; by default the SR is first refitted
    on the tiles (`vemviz.reimage.refit_sr`). ``sr_volume`` is the plan's SR, else recomputed."""
    scale = int(plan["scale"])
    hr_voxel = sr_mod.sr_voxel_size(low.require_voxel_size("re-imaging"), scale)
    made_for = plan.get("lowres_sha256")  # plans written before it have none
    if made_for is not None and made_for != reimage_mod.fingerprint(low.numpy()):
        raise VemvizError(
            "this plan was made for another low-resolution scan (its values differ from the "
            "plan's lowres_sha256); merge the tiles into the scan that was planned"
        )
    report: Report = {"refit": False}
    if refit and len(tiles) >= reimage_mod.MIN_REFIT_TILES:
        training = _training(time_budget, device, seed)
        upscaled = reimage_mod.refit_sr(low.numpy(), tiles, scale, training)
        report["refit"] = True
    else:
        if refit:
            report["refit_skipped"] = f"fewer than {reimage_mod.MIN_REFIT_TILES} tiles"
        if sr_volume is None:
            sr_volume = sr(low, scale=scale, method=plan["sr_method"])[0]
        upscaled = sr_volume.numpy()
    merged, merge_report = reimage_mod.merge_tiles(upscaled, low.numpy(), plan, tiles)
    report.update(merge_report)
    return low.with_data(merged, hr_voxel, stage="merge-reimage"), report


CLASS_OF_TARGET = {"mito": "mitochondrion", "cells": "cell"}


def mesh(
    labels: Volume,
    out_dir: Path,
    *,
    smooth: int = 20,
    decimate: float = 0.5,
    units: str = "um",
    class_name: str | None = None,
    opacity: float | None = None,
    ply: bool = False,
    workers: int = 0,
    largest: int | None = None,
    memory_budget: int | None = None,
    scheduler: str | None = None,
    interpolate_z: bool = False,
) -> Report:
    """Mesh a label volume into ``out_dir``; returns the manifest.

    Label volumes larger than ``memory_budget`` bytes (or any, with a dask ``scheduler``) are
    meshed by blocks (`vemviz.blockmesh`), from the same marching-cubes surfaces.
    ``interpolate_z`` rounds off the steps of thick sections (`vemviz.mesh`; by blocks, each
    object is then meshed on its own box).
    """
    from vemviz import mesh as mesh_mod  # pyvista and trimesh load only when meshing

    voxel = labels.require_voxel_size("meshing in physical units")
    target = labels.metadata.get("target")
    class_name = class_name or CLASS_OF_TARGET.get(target, "object")
    if opacity is None:
        opacity = 0.35 if target == "cells" else 1.0
    options = mesh_mod.MeshOptions(smooth_iterations=smooth, decimate=decimate, units=units,
                                   workers=workers, interpolate_z=interpolate_z)  # fmt: skip
    ratio = voxel[0] / min(voxel[1], voxel[2])
    if mesh_mod.section_steps(voxel, options) == 1 and ratio >= mesh_mod.MIN_SECTION_RATIO:
        status(f"note: sections are {ratio:.1f}x thicker than the pixels, and every one will show "
               "as a step on the surfaces; --interpolate-z rounds them off")  # fmt: skip
    if scheduler is not None or (memory_budget is not None and labels.nbytes > memory_budget):
        from vemviz.blockmesh import mesh_blocks

        return mesh_blocks(
            labels, Path(out_dir), class_name=class_name, opacity=opacity, options=options,
            write_ply=ply, memory_budget=memory_budget or labels.nbytes, scheduler=scheduler,
        )  # fmt: skip
    return mesh_mod.mesh_labels(
        labels.numpy(), voxel, out_dir, class_name=class_name, opacity=opacity,
        options=options, write_ply=ply, largest=largest,
    )  # fmt: skip
