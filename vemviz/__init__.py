"""vemviz: volume electron microscopy to 3D models people can look at.

The public Python API mirrors the CLI: read a volume, run a stage function on it, write it.

    >>> import vemviz
    >>> vol = vemviz.read_volume("stack.tif", voxel_size=(40, 8, 8))
    >>> vemviz.write_volume(vol, "stack.ome.zarr")
"""

from vemviz.errors import VemvizError
from vemviz.io import read_volume, write_volume
from vemviz.volume import Volume

__version__ = "0.1.0"

__all__ = ["Volume", "VemvizError", "read_volume", "write_volume", "__version__"]
