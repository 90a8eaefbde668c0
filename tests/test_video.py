"""Slice fly-through videos: frame count, physical aspect, moving content, label colours."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest

from vemviz import VemvizError
from vemviz.cli import main
from vemviz.io import write_volume
from vemviz.mesh import label_color
from vemviz.video import frame_size, make_video


def _read_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def _hue_pixels(frame: np.ndarray, color: str) -> int:
    """Pixels whose hue is that of ``color`` and that are clearly coloured."""
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(float) / 255
    hue = colorsys.rgb_to_hsv(*(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)))[0]
    distance = np.abs((hsv[:, 0] - hue + 0.5) % 1.0 - 0.5)
    return int(np.count_nonzero((distance < 0.05) & (hsv[:, 1] > 0.2)))


def test_z_video_has_one_frame_per_slice_that_moves(phantom, tmp_path):
    raw = phantom.raw
    out = tmp_path / "fly.mp4"
    report = make_video(raw.numpy(), out, voxel_size_nm=raw.voxel_size_nm, fps=12)
    frames = _read_frames(out)
    assert report["frames"] == len(frames) == raw.shape[0]
    assert frames[0].shape == (raw.shape[1], raw.shape[2], 3)
    # the content changes through the stack (the caption alone is a few hundred pixels)
    change = np.mean(np.abs(frames[0].astype(int) - frames[-1].astype(int)) > 20)
    assert change > 0.05
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_y_video_with_label_overlay_in_manifest_colours(phantom, tmp_path):
    raw, mito = phantom.raw, phantom.mito.numpy()
    out = tmp_path / "mito_y.mp4"
    make_video(raw.numpy(), out, axis="y", voxel_size_nm=raw.voxel_size_nm, labels=mito)
    frames = _read_frames(out)
    assert len(frames) == raw.shape[1]
    # re-slices are stretched to square pixels: z (40 nm) is 5 times y (8 nm)
    assert frames[0].shape[:2] == (raw.shape[0] * 5, raw.shape[2])
    assert frame_size((raw.shape[0], raw.shape[2]), 1, None) == (raw.shape[2], raw.shape[0])
    # each label's colour shows up in the frame through its middle
    for label in np.unique(mito)[1:]:
        y = int(np.median(np.nonzero(mito == label)[1]))
        assert _hue_pixels(frames[y], label_color(int(label))) > 30, label
    plain = tmp_path / "plain_y.mp4"
    make_video(raw.numpy(), plain, axis="y", voxel_size_nm=raw.voxel_size_nm)
    label = int(np.unique(mito)[1])
    y = int(np.median(np.nonzero(mito == label)[1]))
    assert _hue_pixels(_read_frames(plain)[y], label_color(label)) < 10


def test_video_cli_and_bad_input(phantom, tmp_path, capsys):
    raw_path = tmp_path / "raw.tif"
    labels_path = tmp_path / "mito.tif"
    write_volume(phantom.raw, raw_path)
    write_volume(phantom.mito, labels_path, is_label=True)
    out = tmp_path / "x.mp4"
    assert main(["video", str(raw_path), "--out", str(out), "--axis", "x",
                 "--labels", str(labels_path), "--fps", "5"]) == 0  # fmt: skip
    assert len(_read_frames(out)) == phantom.raw.shape[2]
    assert main(["video", str(raw_path), "--out", str(tmp_path / "x.avi")]) == 2
    assert "mp4" in capsys.readouterr().err
    small = tmp_path / "small.tif"
    write_volume(phantom.mito.with_data(phantom.mito.numpy()[:, :10]), small, is_label=True)
    assert main(["video", str(raw_path), "--out", str(tmp_path / "y.mp4"),
                 "--labels", str(small)]) == 2  # fmt: skip
    assert "shape" in capsys.readouterr().err
    assert not (tmp_path / "y.mp4").exists()
    with pytest.raises(VemvizError, match="fps"):
        make_video(phantom.raw.numpy(), tmp_path / "z.mp4", fps=0)
