"""Rectangles to blank, as (top, left, bottom, right) pixel bounds, bottom/right exclusive."""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def clip(box: Box, rows: int, cols: int, pad: int = 0) -> Box | None:
    """``box`` grown by ``pad`` and cut to the image; None when nothing is left."""
    top, left, bottom, right = box
    top, left = max(top - pad, 0), max(left - pad, 0)
    bottom, right = min(bottom + pad, rows), min(right + pad, cols)
    return (top, left, bottom, right) if bottom > top and right > left else None


def mask_of(boxes: list[Box], rows: int, cols: int) -> np.ndarray:
    """The union of ``boxes`` as a boolean image."""
    mask = np.zeros((rows, cols), bool)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = True
    return mask
