"""Crop windows that the DALI graph, the finishing step and the ten-crop mean image agree on (pure arithmetic)."""

from __future__ import annotations

__all__ = ["IMAGE_SIZE", "center_start", "ten_crop_windows"]

IMAGE_SIZE = 256  # the paper's (and build-shards' default) image side; builds say theirs in manifest image_size


def center_start(size: int, crop: int) -> int:
    """Offset of the central crop on both axes (rounded down when size - crop is odd)."""
    return (size - crop) // 2


def ten_crop_windows(size: int, crop: int) -> list[tuple[int, int, int]]:
    """(y, x, mirror) of the paper's 10 test patches (section 4.1): TL, TR, BL, BR, center, then the same mirrored."""
    last, mid = size - crop, center_start(size, crop)
    corners_and_center = [(0, 0), (0, last), (last, 0), (last, last), (mid, mid)]
    return [(y, x, mirror) for mirror in (0, 1) for y, x in corners_and_center]
