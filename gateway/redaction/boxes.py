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


def text_bands(boxes: list[Box], rows: int, cols: int, margin: int = 4) -> list[Box]:
    """Full-width bands of rows around ``boxes``, overlapping ones merged: where OCR reads.

    A detector may find part of a line only, so the band runs the frame's width and adds
    half the box's height (at least ``margin``) above and below.
    """
    spans = sorted((max(t - m, 0), min(b + m, rows)) for t, _, b, _ in boxes for m in [max(margin, (b - t) // 2)])
    merged: list[list[int]] = []
    for top, bottom in spans:
        if merged and top <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], bottom)
        else:
            merged.append([top, bottom])
    return [(top, 0, bottom, cols) for top, bottom in merged]
