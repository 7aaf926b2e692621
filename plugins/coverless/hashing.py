"""Difference matrix and 9-bit hashes (paper section 4.7, eqs. 14-15), in integers.

Row m of the difference matrix is the change of one quadrant's 9 LBP sums between two
neighbouring images. Bit i is 1 where the value is at least the row mean, tested as
``9 * w_i >= sum(w)``: no division, no rounding. The row's margin is the smallest
``|9 * w_i - sum(w)|``; a row whose margin is small could flip a bit on another machine
or after a small change, so it is marked unusable and never enters the index table.

Method 2 takes the same bits from window differences (``window_differences``) and uses
each element on its own (a cell, ``cell_values``); its features are integers from the
pixels on, so no margin is needed for determinism, only for robustness (``carriers``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = 9
# Smallest margin of a usable row, in units of 9 x LBP-sum. One 8-bit pixel step in the
# low-rank image moves a sub-block sum by at most 255 + 8 * 128 = 1279, which moves the
# margin by at most 10 * 1279: rows above 2048 survive small perturbations.
MARGIN = 2048
_WEIGHTS = 1 << np.arange(BITS - 1, -1, -1, dtype=np.int64)  # b1 is the most significant bit


@dataclass(frozen=True)
class RowHashes:
    """One hash per row of the difference matrix, with the row's margin."""

    hashes: np.ndarray  # int64, 0..511
    margins: np.ndarray  # int64, >= 0
    margin: int = MARGIN

    @property
    def usable(self) -> np.ndarray:
        return self.margins >= self.margin

    def digest_bytes(self) -> bytes:
        """The usable rows and their hashes, as bytes to be digested (table identity)."""
        usable = self.usable
        return np.where(usable, self.hashes, -1).astype(">i2").tobytes()


def difference_matrix(features: np.ndarray) -> np.ndarray:
    """(N, 4, 9) LBP features in series order -> (4 * (N - 1), 9) differences."""
    return (features[1:] - features[:-1]).reshape(-1, BITS)


def window_differences(features: np.ndarray, window: int) -> np.ndarray:
    """(N, 4, 9) features -> (4 * (N - 2 * window + 1), 9): the sum of ``window`` images
    minus the sum of the ``window`` images before them, at every start (method 2).
    ``window`` 1 is the paper's difference matrix; a wider window grows the anatomy's change
    with the window while the independent per-image damage of an attack only grows with its
    square root."""
    cumulative = np.concatenate([np.zeros((1, *features.shape[1:]), dtype=np.int64), np.cumsum(features, axis=0)])
    sums = cumulative[window:] - cumulative[:-window]
    return (sums[window:] - sums[:-window]).reshape(-1, BITS)


def cell_values(differences: np.ndarray) -> np.ndarray:
    """``9 * w_i - sum(w)`` for every element: its sign is the hash bit (eq. 14-15), its
    size how far the bit is from flipping."""
    return BITS * differences - differences.sum(axis=1, keepdims=True)


def row_hashes(differences: np.ndarray, margin: int = MARGIN) -> RowHashes:
    scaled = cell_values(differences)
    bits = (scaled >= 0).astype(np.int64)
    return RowHashes(hashes=bits @ _WEIGHTS, margins=np.abs(scaled).min(axis=1), margin=margin)
