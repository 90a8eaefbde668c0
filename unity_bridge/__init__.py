"""vemviz -> Unity: export mesh folders as Unity datasets (OBJ + MTL, GLB, .meta files).

`export_unity` is the entry point (``vemviz export-unity``); the Unity side lives in the
template project ``UnityProject/`` next to this package.
"""

from unity_bridge.export import export_unity

__all__ = ["export_unity"]
