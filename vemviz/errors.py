"""User-facing errors.

Every problem a user can cause (a missing file, a corrupt TIFF, a volume of the wrong
dimensionality, a missing voxel size, an empty label volume) raises `VemvizError` with one
sentence that says what is wrong and, where possible, what to do. The CLI prints that sentence
on one line and exits with status 2; Python callers catch it like any other exception.
Programming errors are left as ordinary exceptions so that they keep their tracebacks.
"""

from __future__ import annotations


class VemvizError(Exception):
    """A clear, one-line problem with the user's input or request."""


class Cancelled(VemvizError):
    """The user cancelled long-running work (Ctrl-C or a cancel request)."""
