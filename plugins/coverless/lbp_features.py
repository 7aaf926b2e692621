"""LBP feature matrix of one image (paper section 4.6, Algorithm 2), vectorised.

The low-rank image is split into 4 blocks; each block's 8-neighbour LBP codes are summed
over a 3x3 grid of sub-blocks, giving 4 rows of 9 integer sums per image. Pure integer
numpy: no value here can differ between machines.
"""

from __future__ import annotations

import numpy as np

# Neighbour offsets (dy, dx), clockwise from the top-left; bit n is neighbour n.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def lbp(block: np.ndarray) -> np.ndarray:
    """8-neighbour LBP codes (neighbour >= centre sets the bit) of the block's interior."""
    h, w = block.shape
    centre = block[1 : h - 1, 1 : w - 1]
    codes = np.zeros(centre.shape, dtype=np.int64)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        neighbour = block[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
        codes |= (neighbour >= centre).astype(np.int64) << bit
    return codes


def sub_block_sums(codes: np.ndarray) -> np.ndarray:
    """The 9 sums of a 3x3 grid of sub-blocks, row by row."""
    h, w = codes.shape
    ys, xs = (np.arange(3) * h) // 3, (np.arange(3) * w) // 3
    return np.add.reduceat(np.add.reduceat(codes, ys, axis=0), xs, axis=1).ravel()


def quadrants(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """Top-left, top-right, bottom-left, bottom-right."""
    h, w = img.shape
    hy, hx = h // 2, w // 2
    return img[:hy, :hx], img[:hy, hx:], img[hy:, :hx], img[hy:, hx:]


def feature_rows(img8: np.ndarray) -> np.ndarray:
    """4 x 9 int64: the LBP sub-block sums of the 4 quadrants."""
    return np.stack([sub_block_sums(lbp(q)) for q in quadrants(img8)])
