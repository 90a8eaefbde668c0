"""Length units found in microscopy metadata, converted to nanometres."""

from __future__ import annotations

from vemviz.errors import VemvizError

_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "\\u00b5m": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "ångström": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
}


def nm_per_unit(unit: str) -> float:
    """How many nanometres one ``unit`` is (``unit`` as written in TIFF/OME/NGFF metadata)."""
    key = unit.strip().lower()
    if key not in _NM_PER_UNIT:
        raise VemvizError(f"unknown length unit {unit!r} in the file's metadata; pass --voxel-size")
    return _NM_PER_UNIT[key]


def is_known_unit(unit: str | None) -> bool:
    return unit is not None and unit.strip().lower() in _NM_PER_UNIT
