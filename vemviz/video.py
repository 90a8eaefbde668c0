"""Slice fly-through videos of a volume, optionally with the labels drawn over it.

Every slice along the chosen axis (z: sections; y or x: re-slices through the stack) becomes
one frame. Intensities are mapped to 8 bits with one window for the whole volume (the 0.5 and
99.5 percentiles of a strided sample), so brightness does not flicker between frames.
Re-slices of anisotropic data are stretched along z to square pixels in physical units
(area interpolation when shrinking, linear when stretching). Labels are blended over the
grey image in the colours of `vemviz.mesh.label_color`, the colours of the mesh manifest, so
an object looks the same in the video and in the 3D render; each frame carries the slice
number and its depth. Frames are encoded by OpenCV's FFmpeg back end as MPEG-4 Part 2
(``mp4v``) in an MP4 container, written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.mesh import label_color
from vemviz.progress import track
from vemviz.volume import VoxelSize

AXES = {"z": 0, "y": 1, "x": 2}
OVERLAY_ALPHA = 0.45
FOURCC = "mp4v"
MAX_SIDE = 4096  # longest frame side after the physical-aspect stretch


def intensity_window(volume: np.ndarray, samples: int = 2_000_000) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of a strided sample of ``volume``."""
    step = max(1, volume.size // samples)
    values = volume.reshape(-1)[::step].astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def label_lut(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted label ids present (0 first) and their RGB colours (background black)."""
    ids = np.unique(labels)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
    colours = np.zeros((len(ids), 3), dtype=np.uint8)
    for i, label in enumerate(ids[1:], start=1):
        text = label_color(int(label))
        colours[i] = [int(text[k : k + 2], 16) for k in (1, 3, 5)]
    return ids, colours


def overlay(
    grey: np.ndarray, labels: np.ndarray, ids: np.ndarray, colours: np.ndarray
) -> np.ndarray:
    """RGB frame: ``grey`` with each labelled pixel blended towards its label's colour."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    index = np.searchsorted(ids, labels)
    inside = labels != 0
    rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * colours[index[inside]]
    return rgb.round().astype(np.uint8)


def frame_size(
    shape: tuple[int, int], axis: int, voxel_size_nm: VoxelSize | None
) -> tuple[int, int]:
    """(width, height) of a frame: physical aspect, even sides (codecs need them), capped."""
    rows, cols = shape
    if voxel_size_nm is not None:
        row_nm = voxel_size_nm[1] if axis == 0 else voxel_size_nm[0]
        col_nm = voxel_size_nm[2] if axis != 2 else voxel_size_nm[1]
        rows = rows * row_nm / col_nm
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    width, height = (max(2, 2 * round(v * scale / 2)) for v in (cols, rows))
    return width, height


def _resize(image: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    if nearest:
        rows = np.minimum((np.arange(size[1]) + 0.5) * image.shape[0] / size[1], image.shape[0] - 1)
        cols = np.minimum((np.arange(size[0]) + 0.5) * image.shape[1] / size[0], image.shape[1] - 1)
        return image[rows.astype(int)[:, None], cols.astype(int)[None, :]]
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _caption(frame: np.ndarray, text: str) -> None:
    scale = max(0.4, frame.shape[0] / 700)
    origin = (int(8 * scale), frame.shape[0] - int(10 * scale))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness,
                    cv2.LINE_AA)  # fmt: skip


def slice_frames(
    volume: np.ndarray,
    axis: str = "z",
    voxel_size_nm: VoxelSize | None = None,
    labels: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """RGB uint8 frames, one per slice along ``axis``, all of one size."""
    if axis not in AXES:
        raise VemvizError(f"axis must be one of z, y, x, got {axis!r}")
    if volume.ndim != 3:
        raise VemvizError(f"the volume must be 3D (z, y, x), got shape {volume.shape}")
    if labels is not None and labels.shape != volume.shape:
        raise VemvizError(
            f"labels have shape {labels.shape} but the volume has shape {volume.shape}"
        )
    index = AXES[axis]
    window = intensity_window(volume)
    ids, colours = label_lut(labels) if labels is not None else (None, None)
    plane = tuple(s for i, s in enumerate(volume.shape) if i != index)
    size = frame_size(plane, index, voxel_size_nm)
    step_nm = voxel_size_nm[index] if voxel_size_nm is not None else None
    count = volume.shape[index]
    for i in range(count):
        grey = _resize(to_uint8(np.take(volume, i, axis=index), window), size, nearest=False)
        if labels is None:
            frame = np.repeat(grey[..., None], 3, axis=2)
        else:
            section = _resize(np.take(labels, i, axis=index), size, nearest=True)
            frame = overlay(grey, section, ids, colours)
        depth = f"  {i * step_nm / 1000:.2f} um" if step_nm else ""
        _caption(frame, f"{axis} {i + 1}/{count}{depth}")
        yield frame


def write_video(frames: Iterator[np.ndarray], out: str | os.PathLike[str], fps: float,
                total: int | None = None) -> int:  # fmt: skip
    """Encode RGB ``frames`` into the MP4 ``out`` atomically; returns the number of frames."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise VemvizError(f"the video must be an .mp4 file, got {out.name}")
    if not fps > 0:
        raise VemvizError(f"--fps must be positive, got {fps}")
    written = 0
    with atomic_path(out) as temp:
        staging = temp.with_name(temp.name + ".mp4")  # OpenCV picks the container by suffix
        writer = None
        try:
            for frame in track(frames, f"encoding {out.name}", total=total):
                if writer is None:
                    height, width = frame.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*FOURCC)
                    writer = cv2.VideoWriter(str(staging), fourcc, fps, (width, height))
                    if not writer.isOpened():
                        raise VemvizError(f"OpenCV cannot write {FOURCC} video to {out}")
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                written += 1
            if writer is None:
                raise VemvizError("no frames to write")
            writer.release()
            writer = None
            os.replace(staging, temp)
        finally:
            if writer is not None:
                writer.release()
            staging.unlink(missing_ok=True)
    return written


def make_video(
    volume: np.ndarray,
    out: str | os.PathLike[str],
    *,
    axis: str = "z",
    voxel_size_nm: VoxelSize | None = None,
    labels: np.ndarray | None = None,
    fps: float = 10.0,
) -> dict[str, object]:
    """Write the slice fly-through of ``volume`` to ``out``; returns a small report."""
    frames = slice_frames(volume, axis, voxel_size_nm, labels)
    count = write_video(frames, out, fps, total=volume.shape[AXES.get(axis, 0)])
    return {"frames": count, "fps": fps, "axis": axis, "seconds": round(count / fps, 2)}
