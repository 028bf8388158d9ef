"""The error every reader of the source tree raises: the layout module and the devkit reader it calls share it,
so it lives apart from both (neither has to import the other to raise it)."""

from __future__ import annotations

__all__ = ["LayoutError"]


class LayoutError(ValueError):
    """The source tree is not one of the supported layouts, or its labels are inconsistent."""
