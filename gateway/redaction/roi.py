"""The coverless paper's ROI step, used as a fast text detector.

Tan et al. (2020, section 4.4) threshold the image at a grey level h_g (a fixed value or
Otsu's "maximum variance method"); the large connected components are the anatomy (the
ROI), and components smaller than h_a are text, which they remove. Here the small
components are the point: they are the burned-in text. Three additions make it a
detector rather than a cleaner:

- outside the anatomy the threshold also runs at fixed fractions of the range, so dim
  text is found, and a label's dark text on a bright patch is caught as the patch;
- inside the anatomy only marks brighter than the tissue count (text burned in at the
  top of the range), because tissue texture at lower levels (ultrasound speckle) makes
  small components of its own;
- the small components are grouped into lines: text comes in rows of similar-height
  marks, while isolated specks (noise, a small vessel) do not.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gateway.redaction.boxes import Box, clip

LEVELS = (0.5, 0.7, 0.9)  # fractions of the frame's range, besides Otsu's threshold


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(float) / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * edges[:-1])
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])  # the upper edge of the lower class


def detect(frame: np.ndarray, max_height: int = 48, max_area_share: float = 0.004, gap: int = 7,
           pad: int = 2) -> list[Box]:
    """Boxes of text lines in one grey frame (2-D, any numeric type).

    A threshold loses at most an anti-aliased fringe of a pixel or so around the
    ink, so ``pad`` plus the stage's own (2) is margin enough; a wider one only blanks
    tissue above and below text that lies over the anatomy.
    """
    img = frame.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return []
    img = (img - lo) / (hi - lo)
    rows, cols = img.shape
    max_area = max_area_share * rows * cols + max_height * 4
    h_g = otsu(img)
    anatomy = _anatomy(img > h_g, max_height, max_area)
    tissue_top = _tissue_top(img[anatomy])
    inside_level = tissue_top + (1.0 - tissue_top) / 4
    marks = np.zeros((rows, cols), bool)
    for level in sorted({h_g, *LEVELS, inside_level}):
        small = small_components(img > level, max_height, cols)
        marks |= small if level >= inside_level else small & ~anatomy
    return _lines(marks, max_height, gap, pad)


def _tissue_top(values: np.ndarray) -> float:
    """The brightest tissue (99.5th percentile), leaving out text burned in over it.

    Burned-in text is drawn at one grey level, so it shows as a spike in the histogram
    of the upper half; those levels are left out, or a long line of text over the
    anatomy would set the bar above itself.
    """
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    neighbours = np.maximum.reduce([np.roll(hist, k) for k in (-3, -2, -1, 1, 2, 3)])
    spike = (hist > 4 * neighbours + 20) & (edges[:-1] > np.median(values))
    keep = ~spike[np.clip((values * 256).astype(int), 0, 255)]
    return float(np.percentile(values[keep], 99.5)) if keep.any() else 1.0


def _anatomy(binary: np.ndarray, max_height: int, max_area: float) -> np.ndarray:
    """The paper's ROI: components too large to be text, holes filled, a margin added."""
    labels, n = ndimage.label(binary)
    if n == 0:
        return binary
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    heights, _ = _extents(labels, n)
    big = (areas > max_area) & (heights > 2 * max_height)  # tall and large: never a text line
    big[0] = False
    return ndimage.binary_fill_holes(big[labels])


def _extents(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Height and width of each labelled component (index 0, the background, is 0)."""
    slices = ndimage.find_objects(labels)
    heights = np.fromiter((0, *(s[0].stop - s[0].start for s in slices)), int, n + 1)
    widths = np.fromiter((0, *(s[1].stop - s[1].start for s in slices)), int, n + 1)
    return heights, widths


def small_components(binary: np.ndarray, max_height: int, cols: int) -> np.ndarray:
    """Components no taller than a text line (a glyph, a word, a label patch)."""
    labels, n = ndimage.label(binary)
    if n == 0:
        return binary
    h, w = _extents(labels, n)
    keep = (h >= 2) & (h <= max_height) & (w <= cols // 2)
    return keep[labels]


def join_rows(marks: np.ndarray, gap: int) -> np.ndarray:
    """``marks`` widened by ``gap`` columns each way (binary dilation by a 1 x (2 gap + 1)
    row, as a running maximum: a tenth of the time of the general dilation)."""
    return ndimage.maximum_filter1d(marks.view(np.uint8), 2 * gap + 1, axis=1, mode="constant").view(bool)


def _lines(marks: np.ndarray, max_height: int, gap: int, pad: int) -> list[Box]:
    """Group marks into lines: close horizontally, similar rows; keep line-shaped groups."""
    rows, cols = marks.shape
    labels, n = ndimage.label(join_rows(marks, gap))
    if n == 0:
        return []
    mark_labels, _ = ndimage.label(marks)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start - 2 * gap
        if not 4 <= h <= max_height:
            continue
        pieces = np.count_nonzero(np.unique(mark_labels[sl][labels[sl] == i]))
        if pieces >= 2 or w >= 2 * h:  # a row of marks, or a word whose letters touch
            box = clip((sl[0].start, sl[1].start + gap, sl[0].stop, sl[1].stop - gap), rows, cols, pad)
            if box:
                boxes.append(box)
    return boxes
