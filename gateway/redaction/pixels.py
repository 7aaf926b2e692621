"""Pixel data in and out of a dataset, for redaction.

Two ways, chosen per object:

- *native*: uncompressed little-endian data with whole-byte samples and no chroma
  subsampling is edited in place, as a numpy view of the stored bytes; everything
  outside the blanked boxes keeps its exact bytes, and restore writes the boxes back.
- *transcoded*: everything else (JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE,
  big endian, subsampled YBR) is decoded by pydicom's handlers (pylibjpeg, GDCM) and
  the protected copy is stored uncompressed (Explicit VR Little Endian). A lossy
  original cannot be re-encoded to the same bytes, so its record keeps the original
  pixel value itself (encrypted in the envelope).

What cannot be decoded raises PluginError, so the series is quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.plugin import PluginError

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL")


@dataclass
class Pixels:
    """Stored sample values as (frames, rows, cols, samples), and how they were read."""

    array: np.ndarray
    photometric: str
    native: bool

    def grey(self) -> np.ndarray:
        """(frames, rows, cols) float images in which brighter means brighter on screen."""
        a = self.array.astype(np.float32)
        if self.photometric == "MONOCHROME1":
            return -a[..., 0]
        if self.photometric.startswith("YBR"):
            return a[..., 0]
        return a.max(axis=3)

    def fill(self) -> np.ndarray:
        """The blank: black on screen, per sample (the darkest value the image uses)."""
        a = self.array
        if self.photometric == "MONOCHROME1":
            return a.max(axis=(0, 1, 2))
        fill = a.min(axis=(0, 1, 2))
        if self.photometric.startswith("YBR"):
            fill[1:] = 1 << (a.dtype.itemsize * 8 - 1)  # neutral chroma
        return fill


def pixel_tag(ds: Dataset) -> str | None:
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise PluginError("burned-in text redaction does not handle float pixel data")
    return "PixelData" if "PixelData" in ds else None


def is_native(ds: Dataset) -> bool:
    return (
        ds.file_meta.TransferSyntaxUID in NATIVE_SYNTAXES
        and int(ds.BitsAllocated) in (8, 16, 32)
        and str(ds.PhotometricInterpretation) in NATIVE_PHOTOMETRICS
    )


def _native_view(ds: Dataset, data: bytes) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)
    dtype = np.dtype(f"<{'i' if int(ds.PixelRepresentation) else 'u'}{int(ds.BitsAllocated) // 8}")
    count = frames * rows * cols * spp
    if len(data) < count * dtype.itemsize:
        raise PluginError("pixel data is shorter than its Rows, Columns and frames say")
    flat = np.frombuffer(data, dtype, count)
    if spp > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        return flat.reshape(frames, spp, rows, cols).transpose(0, 2, 3, 1)
    return flat.reshape(frames, rows, cols, spp)


def load(ds: Dataset) -> Pixels:
    """The pixels of ``ds`` as a writable array; PluginError if they cannot be decoded."""
    try:
        return _load(ds)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise PluginError(f"the image pixel attributes are inconsistent ({type(exc).__name__})") from None


def _load(ds: Dataset) -> Pixels:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("BitsAllocated", 0)) == 1:
        raise PluginError("burned-in text redaction does not handle 1-bit pixel data")
    if is_native(ds):
        return Pixels(_native_view(ds, bytes(ds.PixelData)).copy(), photometric, native=True)
    try:
        decoded = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: cannot redact
        raise PluginError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.SamplesPerPixel)
    if spp == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom converts YBR to RGB when it decodes
    array = np.ascontiguousarray(decoded).reshape(frames, int(ds.Rows), int(ds.Columns), spp)
    return Pixels(array, photometric, native=False)


def store(ds: Dataset, pixels: Pixels) -> None:
    """Write ``pixels`` back: in place when native, else as uncompressed data."""
    if pixels.native:
        data = bytes(ds.PixelData)
        view = _native_view(ds, data)
        out = np.empty_like(view)
        out[...] = pixels.array
        raw = np.ascontiguousarray(out.transpose(0, 3, 1, 2) if _planar(ds) else out).tobytes()
        ds.PixelData = raw + data[len(raw):]  # any padding byte stays as it was
        return
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        # pydicom cannot re-encode a big-endian dataset as little endian safely (OW values)
        raise PluginError("redacting big-endian pixel data (a retired transfer syntax) is not supported")
    arr = pixels.array
    if arr.dtype.itemsize * 8 != int(ds.BitsAllocated):
        raise PluginError("decoded pixel data does not match Bits Allocated")
    data = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if arr.dtype.itemsize == 1 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = pixels.photometric
    if arr.shape[3] > 1:
        ds.PlanarConfiguration = 0


def restore_native(ds: Dataset, boxes_values: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> None:
    """Put the original values of each box back into native pixel data."""
    pixels = Pixels(_native_view(ds, bytes(ds.PixelData)).copy(), str(ds.PhotometricInterpretation), native=True)
    for (top, left, bottom, right), values in boxes_values:
        pixels.array[:, top:bottom, left:right, :] = values
    store(ds, pixels)


def _planar(ds: Dataset) -> bool:
    return int(ds.SamplesPerPixel) > 1 and int(ds.get("PlanarConfiguration", 0)) == 1
