"""Per-image features of method 2: intensity sums of the ROI instead of LBP sums.

Same layout as the paper's LBP matrix (4 quadrants x 3x3 sub-blocks, 4 rows of 9 integer
sums per image), but each sum adds the grey values of the masked, median-filtered image,
not LBP codes. Why (measured, README): in CT tissue the LBP codes are decided by noise of
about one grey level, so JPEG, noise or a filter flips a fifth of them and moves the
difference matrix as much as the anatomy does between neighbouring slices; a sum of grey
values over a sub-block averages that noise away. Pure integer numpy, as before.
"""

from __future__ import annotations

import numpy as np

from plugins.coverless.body_roi import roi_filtered
from plugins.coverless.lbp_features import quadrants, sub_block_sums


def feature_rows(img8: np.ndarray) -> np.ndarray:
    """4 x 9 int64: grey-value sums of the ROI's sub-blocks, quadrant by quadrant."""
    roi = roi_filtered(img8).astype(np.int64)
    return np.stack([sub_block_sums(q) for q in quadrants(roi)])
