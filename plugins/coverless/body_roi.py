"""Region of interest as in the paper (section 4.4): grey threshold, small connected
components removed (that drops burned-in text and specks), mask applied, 3x3 median.

Otsu's threshold is computed with Python integers on the 256-bin histogram so it cannot
differ between machines; the median filter works on uint8, which is exact too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Components smaller than this fraction of the image (1/400) are text or specks, not anatomy.
MIN_AREA_DIVISOR = 400
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def otsu_threshold(img8: np.ndarray) -> int:
    """Otsu's threshold (pixels > t are foreground), exact: the between-class variance is
    compared as integer fractions, so ties break the same way everywhere."""
    hist = np.bincount(img8.ravel(), minlength=256).tolist()
    total = sum(hist)
    total_sum = sum(i * c for i, c in enumerate(hist))
    best_t, best_num, best_den = 0, -1, 1
    count = weighted = 0
    for t in range(255):
        count += hist[t]
        weighted += t * hist[t]
        if count == 0 or count == total:
            continue
        # sigma_b^2 * total^2 = (total_sum*count - total*weighted)^2 / (count*(total-count))
        num = (total_sum * count - total * weighted) ** 2
        den = count * (total - count)
        if num * best_den > best_num * den:
            best_t, best_num, best_den = t, num, den
    return best_t


def roi_filtered(img8: np.ndarray) -> np.ndarray:
    """The masked, median-filtered image (uint8) the low-rank step works on."""
    mask = img8 > otsu_threshold(img8)
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1, img8.size // MIN_AREA_DIVISOR)
        keep[0] = False
        mask = keep[labels]
    masked = np.where(mask, img8, 0).astype(np.uint8)
    return ndimage.median_filter(masked, size=3, mode="nearest")
