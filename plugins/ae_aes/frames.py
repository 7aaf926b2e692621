"""Native (uncompressed) single-channel pixel data as integer frames, and back.

The transform works on the stored words, not on rescaled values: the restore must give
back the exact bytes, and any bits above BitsStored (overlays, junk) are part of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from gateway.plugin import PluginError


@dataclass(frozen=True)
class Layout:
    """How one instance's pixel value is laid out."""

    frames: int
    rows: int
    cols: int
    dtype: str  # numpy dtype of a stored word, e.g. "<u2", ">i2", "u1"
    value_len: int  # bytes in the pixel value, padding included

    @property
    def image_bytes(self) -> int:
        return self.frames * self.rows * self.cols * np.dtype(self.dtype).itemsize


def layout_of(ds: Dataset) -> Layout:
    """The layout of ``ds``'s PixelData, or PluginError for what this transform cannot take."""
    if "PixelData" not in ds:
        raise PluginError("no PixelData (float or double pixel data is not supported)")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        raise PluginError(f"compressed pixel data ({syntax.name}) is not supported; send it uncompressed")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PluginError("only single-channel (grayscale) images are supported")
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16):
        raise PluginError(f"BitsAllocated {bits} is not supported (8 or 16)")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    order = "" if bits == 8 else ("<" if syntax.is_little_endian else ">")
    dtype = f"{order}{'i' if signed else 'u'}{bits // 8}"
    layout = Layout(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns), dtype, len(ds.PixelData))
    if layout.value_len < layout.image_bytes or layout.rows < 1 or layout.cols < 1:
        raise PluginError("PixelData is shorter than Rows x Columns x frames says")
    return layout


def read_frames(ds: Dataset, layout: Layout) -> np.ndarray:
    """(frames, rows, cols) of stored words, native byte order, signed as stored."""
    raw = np.frombuffer(ds.PixelData, dtype=layout.dtype, count=layout.frames * layout.rows * layout.cols)
    return raw.reshape(layout.frames, layout.rows, layout.cols).astype(np.dtype(layout.dtype).newbyteorder("="))


def frames_bytes(frames: np.ndarray, layout: Layout) -> bytes:
    return np.ascontiguousarray(frames, dtype=layout.dtype).tobytes()
