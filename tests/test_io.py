"""Volume IO: round trips keep data and voxel size, metadata is read, bad files fail clearly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.writer import write_image

from vemviz import VemvizError, Volume, read_volume, write_volume
from vemviz.volume import parse_voxel_size

VOXEL = (40.0, 8.5, 7.25)
RNG = np.random.default_rng(7)
ARRAYS = {
    "uint8": RNG.integers(0, 256, (6, 33, 47), dtype=np.uint8),
    "uint16": RNG.integers(0, 65536, (6, 33, 47), dtype=np.uint16),
    "float32": RNG.normal(size=(6, 33, 47)).astype(np.float32),
    "uint32": RNG.integers(0, 2**32 - 1, (6, 33, 47), dtype=np.uint32),
}


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr", ".mrc", ".npy"])
@pytest.mark.parametrize("dtype", list(ARRAYS))
def test_round_trip_keeps_data_and_voxel_size(tmp_path, suffix, dtype):
    data = ARRAYS[dtype]
    path = tmp_path / f"vol{suffix}"
    if suffix == ".mrc" and dtype == "uint32":
        with pytest.raises(VemvizError, match="MRC cannot store uint32"):
            write_volume(Volume(data, VOXEL), path)
        assert not path.exists() and not list(tmp_path.iterdir())
        return
    write_volume(Volume(data, VOXEL), path)
    back = read_volume(path)
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back.numpy(), data)
    assert back.voxel_size_nm == pytest.approx(VOXEL, rel=1e-6)


def test_ome_zarr_is_lazy_and_has_pyramid(tmp_path):
    data = RNG.integers(0, 256, (4, 600, 520), dtype=np.uint8)
    path = write_volume(Volume(data, VOXEL), tmp_path / "big.ome.zarr")
    back = read_volume(path)
    assert back.is_lazy
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    datasets = attrs["ome"]["multiscales"][0]["datasets"]
    assert len(datasets) == 3  # levels are added while the last one is over 256 px: 600, 300, 150
    assert datasets[1]["coordinateTransformations"][0]["scale"] == pytest.approx([40, 17, 14.5])


def test_reads_ngff_04_written_by_ome_zarr_in_micrometres(tmp_path):
    data = RNG.integers(0, 256, (5, 64, 64), dtype=np.uint8)
    path = tmp_path / "v04.ome.zarr"
    fmt = FormatV04()
    root = zarr.group(store=parse_url(str(path), mode="w", fmt=fmt).store)
    write_image(data, root, axes="zyx", fmt=fmt, scale={"z": 0.05, "y": 0.004, "x": 0.004},
                axes_units=dict.fromkeys("zyx", "micrometer"), scale_factors=(2,))  # fmt: skip
    back = read_volume(path)
    np.testing.assert_array_equal(back.numpy(), data)
    assert back.voxel_size_nm == pytest.approx((50.0, 4.0, 4.0))


def test_reads_plain_zarr_with_attribute(tmp_path):
    data = RNG.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    array = zarr.create_array(str(tmp_path / "plain.zarr"), shape=data.shape, dtype=data.dtype)
    array[:] = data
    array.attrs["voxel_size_nm"] = [30, 5, 5]
    back = read_volume(tmp_path / "plain.zarr")
    np.testing.assert_array_equal(back.numpy(), data)
    assert back.voxel_size_nm == (30.0, 5.0, 5.0)


def test_imagej_tiff_from_fiji_in_microns(tmp_path):
    data = RNG.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.005, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})  # fmt: skip
    assert read_volume(path).voxel_size_nm == pytest.approx((50.0, 4.0, 5.0))


def test_imagej_tiff_written_by_vemviz_is_read_by_tifffile_as_imagej(tmp_path):
    path = write_volume(Volume(ARRAYS["uint8"], VOXEL), tmp_path / "out.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "nm"
        assert tif.imagej_metadata["spacing"] == pytest.approx(40.0)


def test_ome_tiff_physical_sizes(tmp_path):
    data = RNG.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.03, "PhysicalSizeY": 0.006, "PhysicalSizeX": 0.006,
        **{f"PhysicalSize{a}Unit": "µm" for a in "ZYX"}})  # fmt: skip
    back = read_volume(path)
    assert back.voxel_size_nm == pytest.approx((30.0, 6.0, 6.0))
    np.testing.assert_array_equal(back.numpy(), data)


def test_slice_folder_natural_order_and_metadata(tmp_path):
    import cv2

    for z in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"slice_{z}.png"), np.full((8, 9), z, np.uint8))
    (tmp_path / "metadata.json").write_text(json.dumps({"voxel_size_nm": [50, 4, 4]}))
    volume = read_volume(tmp_path)
    assert volume.numpy()[:, 0, 0].tolist() == [1, 2, 10]
    assert volume.voxel_size_nm == (50.0, 4.0, 4.0)


def test_slice_folder_mismatched_slice_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "a_1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "a_2.tif", np.zeros((9, 8), np.uint8))
    with pytest.raises(VemvizError, match="a_2.tif"):
        read_volume(tmp_path)


def test_voxel_size_override_and_missing(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, ARRAYS["uint8"])
    volume = read_volume(path)
    assert volume.voxel_size_nm is None
    with pytest.raises(VemvizError, match="--voxel-size"):
        volume.require_voxel_size("meshing")
    assert read_volume(path, (50, 5, 5)).voxel_size_nm == (50.0, 5.0, 5.0)
    assert parse_voxel_size("40,8,8") == (40.0, 8.0, 8.0)
    assert parse_voxel_size("10") == (10.0, 10.0, 10.0)
    for bad in ("40,8", "a,b,c", "0,8,8", "-1,2,3"):
        with pytest.raises(VemvizError):
            parse_voxel_size(bad)


def test_bad_inputs_fail_clearly(tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + os.urandom(200))
    with pytest.raises(VemvizError, match="cannot read TIFF"):
        read_volume(corrupt)
    with pytest.raises(VemvizError, match="not found"):
        read_volume(tmp_path / "missing.tif")
    four_d = tmp_path / "4d.npy"
    np.save(four_d, np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(VemvizError, match="3D"):
        read_volume(four_d)
    with pytest.raises(VemvizError, match="slice .*corrupt.tif"):
        read_volume(tmp_path)  # the folder is read as slices, and the bad one is named
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VemvizError, match="holds no"):
        read_volume(empty)
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(VemvizError, match="cannot tell the format"):
        read_volume(tmp_path / "x.xyz")


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "keep.npy"
    write_volume(Volume(ARRAYS["uint8"], VOXEL), path)
    before = path.read_bytes()
    bad = Volume(ARRAYS["uint8"], VOXEL)
    object.__setattr__(bad, "data", ARRAYS["uint8"].astype(object))
    with pytest.raises(ValueError):
        write_volume(bad, path)  # np.save refuses object arrays without pickle
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.realdata
def test_shared_data_voxel_sizes(shared_data):
    flyem = read_volume(shared_data / "flyem_medulla_10nm" / "raw.tif")
    assert flyem.shape == (250, 250, 250) and flyem.voxel_size_nm == (10.0, 10.0, 10.0)
    vnc = read_volume(shared_data / "vnc_sstem" / "raw.tif")
    assert vnc.shape == (20, 1024, 1024) and vnc.voxel_size_nm == pytest.approx((50, 4.6, 4.6))
