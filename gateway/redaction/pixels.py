"""Pixel data in and out of a dataset, for redaction, through the shared gateway.frames.

Native pixel data is edited in place: everything outside the blanked boxes keeps its exact
bytes, and restore writes the boxes back. Everything else (JPEG baseline and lossless,
JPEG-LS, JPEG 2000, RLE, subsampled YBR) is decoded and the protected copy is stored
uncompressed; the record keeps the original encoded value itself (encrypted in the
envelope), since no encoder gives back another's bytes.

What cannot be decoded raises PluginError, so the series is quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from gateway import frames
from gateway.plugin import PluginError


@dataclass
class Pixels:
    """Stored sample values as (frames, rows, cols, samples), and how they were read."""

    frames: frames.Frames

    @property
    def array(self) -> np.ndarray:
        return self.frames.array

    @property
    def native(self) -> bool:
        return self.frames.encoded is None

    def grey(self) -> np.ndarray:
        """(frames, rows, cols) images in which brighter means brighter on screen.

        In the stored type where it can be (a clip of 8-bit frames stays a quarter of its
        float size); MONOCHROME1 is inverted as float.
        """
        a = self.array
        photometric = self.frames.photometric
        if photometric == "MONOCHROME1":
            return -a[..., 0].astype(np.float32)
        if photometric.startswith("YBR"):
            return a[..., 0].copy()
        return a.max(axis=3)

    def fill(self) -> np.ndarray:
        """The blank: black on screen, per sample (the darkest value the image uses)."""
        a = self.array
        if self.frames.photometric == "MONOCHROME1":
            return a.max(axis=(0, 1, 2))
        fill = a.min(axis=(0, 1, 2))
        if self.frames.photometric.startswith("YBR"):
            fill[1:] = 1 << (a.dtype.itemsize * 8 - 1)  # neutral chroma
        return fill


def pixel_tag(ds: Dataset) -> str | None:
    return "PixelData" if frames.has_pixels(ds) else None


def is_native(ds: Dataset) -> bool:
    return frames.is_native(ds)


def load(ds: Dataset) -> Pixels:
    """The pixels of ``ds`` as a writable array; PluginError if they cannot be decoded."""
    return Pixels(frames.read(ds))


def store(ds: Dataset, pixels: Pixels) -> None:
    """Write ``pixels`` back: in place when native, else as uncompressed data."""
    frames.write(ds, pixels.frames)


def restore_native(ds: Dataset, boxes_values: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> None:
    """Put the original values of each box back into native pixel data."""
    if not frames.is_native(ds):
        raise PluginError("the protected object's pixel data is not native")
    pixels = load(ds)
    for (top, left, bottom, right), values in boxes_values:
        pixels.array[:, top:bottom, left:right, :] = values
    store(ds, pixels)
