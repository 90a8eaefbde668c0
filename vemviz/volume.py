"""The `Volume`: a 3D image plus its voxel size in nanometres.

Axes are always (z, y, x): z is the sectioning (axial) direction, y and x the imaging plane.
`data` is either an in-memory ``numpy.ndarray`` or a lazy ``dask.array.Array`` (as read from
zarr/OME-Zarr); functions that need every voxel call `Volume.numpy()`, chunked code keeps
`Volume.data` lazy. `voxel_size_nm` is ``(z, y, x)`` in nanometres, or ``None`` when the file
carried none; stages that need physical units call `Volume.require_voxel_size()`, which fails
with a message telling the user to pass ``--voxel-size Z,Y,X``. `metadata` carries free-form
provenance (source file, format, channel names); it never changes how data are interpreted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vemviz.errors import VemvizError

VoxelSize = tuple[float, float, float]


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask.")


def validate_voxel_size(value: Any) -> VoxelSize:
    """Return ``value`` as a (z, y, x) tuple of positive finite floats, or raise."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise VemvizError(
            f"voxel size must be three numbers (z, y, x) in nm, got {value!r}"
        ) from exc
    if len(values) != 3:
        raise VemvizError(f"voxel size must have three values (z, y, x) in nm, got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise VemvizError(f"voxel size values must be positive and finite, got {values}")
    return values  # type: ignore[return-value]


def parse_voxel_size(text: str) -> VoxelSize:
    """Parse ``"Z,Y,X"`` (nm) or a single number for isotropic voxels."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError as exc:
        raise VemvizError(f"--voxel-size must look like 40,8,8 (nm), got {text!r}") from exc
    if len(numbers) == 1:
        numbers *= 3
    return validate_voxel_size(numbers)


@dataclass(frozen=True)
class Volume:
    """A 3D (z, y, x) image with its voxel size in nm and free-form metadata."""

    data: Any
    voxel_size_nm: VoxelSize | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.data, np.ndarray) or _is_dask(self.data)):
            object.__setattr__(self, "data", np.asarray(self.data))
        if self.data.ndim != 3:
            raise VemvizError(
                f"expected a 3D volume (z, y, x), got {self.data.ndim}D data of shape "
                f"{tuple(self.data.shape)}"
            )
        if min(self.data.shape) == 0:
            raise VemvizError(f"volume is empty: shape {tuple(self.data.shape)}")
        if self.voxel_size_nm is not None:
            object.__setattr__(self, "voxel_size_nm", validate_voxel_size(self.voxel_size_nm))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def is_lazy(self) -> bool:
        return _is_dask(self.data)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        """All voxels as a numpy array (computes a lazy volume)."""
        if self.is_lazy:
            return np.asarray(self.data.compute())
        return self.data

    def require_voxel_size(self, purpose: str = "this step") -> VoxelSize:
        """The voxel size, or a clear error saying how to provide it."""
        if self.voxel_size_nm is None:
            raise VemvizError(
                f"{purpose} needs the voxel size, and the input carries none: "
                "pass --voxel-size Z,Y,X in nm (for example --voxel-size 40,8,8)"
            )
        return self.voxel_size_nm

    @property
    def anisotropy(self) -> float:
        """z spacing divided by the mean lateral spacing (1.0 for isotropic data)."""
        z, y, x = self.require_voxel_size("the anisotropy")
        return z / ((y + x) / 2)

    def with_data(
        self, data: Any, voxel_size_nm: VoxelSize | None = None, **metadata: Any
    ) -> Volume:
        """A new Volume with other data (and optionally voxel size); metadata is merged."""
        return replace(
            self,
            data=data,
            voxel_size_nm=self.voxel_size_nm if voxel_size_nm is None else voxel_size_nm,
            metadata={**self.metadata, **metadata},
        )

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in-memory"
        return (
            f"Volume(shape={self.shape}, dtype={self.dtype}, voxel_size_nm={self.voxel_size_nm}, "
            f"{kind})"
        )
