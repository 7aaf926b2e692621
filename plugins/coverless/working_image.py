"""Turn a DICOM instance into the small 8-bit image every later step works on.

Everything here is integer arithmetic (exact percentiles, block sums, integer division),
so sender and receiver get the same bytes on any machine: the hash table rebuilt on
restore depends on these bytes and nothing may round differently.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

# Window limits as fractions (per ten thousand) of the sorted pixel values: robust to a
# few hot pixels, unlike min/max.
LOW_PERMYRIAD, HIGH_PERMYRIAD = 50, 9950


class UnsupportedImage(ValueError):
    """The instance has no single 2D image this method can use (message without PHI)."""


def render8(ds: Dataset) -> np.ndarray:
    """The instance's image as uint8 at full resolution (grey, windowed by percentiles)."""
    if "PixelData" not in ds:
        raise UnsupportedImage("an instance has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedImage("multi-frame instances are not supported")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the plugin reports it, never the pixels
        raise UnsupportedImage(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    values = np.asarray(arr).astype(np.int64)
    if values.ndim == 3:  # colour: integer mean of the samples
        values = values.sum(axis=-1) // values.shape[-1]
    if values.ndim != 2 or min(values.shape) < 8:
        raise UnsupportedImage("the image is not a 2D image of at least 8x8 pixels")
    return window8(values)


def window8(values: np.ndarray) -> np.ndarray:
    """Map integer values to 0..255 between exact low/high percentiles."""
    flat = values.ravel()
    n = flat.size
    k_lo, k_hi = n * LOW_PERMYRIAD // 10000, min(n - 1, n * HIGH_PERMYRIAD // 10000)
    part = np.partition(flat, (k_lo, k_hi))
    lo, hi = int(part[k_lo]), int(part[k_hi])
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, lo, hi) - lo) * 255 // (hi - lo)
    return scaled.astype(np.uint8)


def resample(img8: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` uint8: exact block mean when the size divides, else nearest pixel."""
    h, w = img8.shape
    if h % size == 0 and w % size == 0:
        fy, fx = h // size, w // size
        sums = img8.astype(np.int64).reshape(size, fy, size, fx).sum(axis=(1, 3))
        return (sums // (fy * fx)).astype(np.uint8)
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    return np.ascontiguousarray(img8[np.ix_(rows, cols)])
