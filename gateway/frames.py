"""Any decodable pixel data as native frames, and back: the one way every pixel stage reads pixels.

Two cases, chosen per object:

- *native*: uncompressed data (little or big endian) with whole-byte samples and no chroma
  subsampling is read as the stored words themselves, in the stored layout (planar or
  interleaved, byte order, padding after the samples); ``write`` puts changed words back in
  that same layout, so whatever a stage leaves alone keeps its exact bytes.
- *decoded*: everything else (JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE, subsampled
  YBR) is decoded by pydicom's handlers (pylibjpeg, GDCM); YBR colour comes out as RGB. The
  original encoded value is kept (``Frames.encoded``): a stage puts it in its sealed record,
  and restore puts it back as it was, byte for byte (no encoder gives back another's bytes).
  ``write`` stores the protected copy uncompressed (Explicit VR Little Endian), which Orthanc
  and every viewer read.

What no installed handler decodes, and layouts no stage can carry (float pixels, 1-bit
pixels where words are needed), raise PluginError: the series is quarantined, never
forwarded as it came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian

from gateway.plugin import PluginError

# Kinds of pixel data a transform may refuse (its ``refuses``; check-config names them per route).
FLOAT = "float pixel data"
WIDE = "32-bit pixel data"
ONE_BIT = "1-bit pixel data"
UNDECODABLE = "compressed pixel data no installed decoder reads"
# What a route's match may name whose objects can carry such pixel data.
MAY_CARRY = {
    "RTDOSE": WIDE, "1.2.840.10008.5.1.4.1.1.481.2": WIDE,  # RT Dose: 16 or 32 bits
    "SEG": ONE_BIT, "1.2.840.10008.5.1.4.1.1.66.4": ONE_BIT,  # binary segmentations
    "1.2.840.10008.5.1.4.1.1.30": FLOAT,  # Parametric Map
    # video (MPEG-2, H.264, HEVC): endoscopy, and the video endoscopic, microscopic, photographic classes
    "ES": UNDECODABLE, "1.2.840.10008.5.1.4.1.1.77.1.1.1": UNDECODABLE,
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": UNDECODABLE, "1.2.840.10008.5.1.4.1.1.77.1.4.1": UNDECODABLE,
}

_FAMILIES = ("MPEG2", "MPEG-4 AVC/H.264", "HEVC/H.265", "JPEG 2000 Part 2", "JPIP", "SMPTE ST 2110")

# Sample layouts whose stored words are the samples themselves (one per pixel and channel).
WORD_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL")


@dataclass(frozen=True)
class Layout:
    """Where the samples of one native pixel value sit."""

    frames: int
    rows: int
    cols: int
    samples: int
    dtype: str  # numpy dtype of a stored word, byte order included: "<u2", ">i2", "|u1"
    planar: bool  # colour stored plane by plane (PlanarConfiguration 1)

    @property
    def count(self) -> int:
        return self.frames * self.rows * self.cols * self.samples

    @property
    def image_bytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, object]:
        return {"frames": self.frames, "rows": self.rows, "cols": self.cols, "samples": self.samples,
                "dtype": self.dtype, "planar": self.planar}

    @classmethod
    def from_json(cls, head: dict[str, Any]) -> Layout:
        return cls(int(head["frames"]), int(head["rows"]), int(head["cols"]),
                   int(head.get("samples", 1)), str(head["dtype"]), bool(head.get("planar", False)))


@dataclass
class Frames:
    """Sample values as (frames, rows, cols, samples), native byte order, signed as stored."""

    array: np.ndarray
    layout: Layout  # how ``write`` will store them
    photometric: str  # of ``array`` (RGB for decoded YBR)
    encoded: bytes | None  # the original encoded pixel value when it had to be decoded


def has_pixels(ds: Dataset) -> bool:
    """Whether ``ds`` has integer pixel data; float and double pixel data raise PluginError."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise PluginError(f"{FLOAT} (float or double) is not supported")
    return "PixelData" in ds


def undecodable_families() -> list[str]:
    """Compressed transfer syntaxes pydicom knows but no installed handler decodes, by family."""
    missing = set()
    for uid in AllTransferSyntaxes:
        if not uid.is_compressed:
            continue
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            name = uid.name.removeprefix("Fragmentable ")
            missing.add(next((f for f in _FAMILIES if name.startswith(f)), name))
    return sorted(missing)


def is_native(ds: Dataset) -> bool:
    """Uncompressed pixel data whose stored words are the samples (editable in place)."""
    return (not ds.file_meta.TransferSyntaxUID.is_compressed
            and int(ds.get("BitsAllocated", 0)) in (8, 16, 32)
            and str(ds.get("PhotometricInterpretation", "")) in WORD_PHOTOMETRICS)


def read(ds: Dataset) -> Frames:
    """The pixels of ``ds`` (not changed); PluginError if they cannot be had."""
    try:
        return _read(ds)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise PluginError(f"the image pixel attributes are inconsistent ({type(exc).__name__})") from None


def write(ds: Dataset, frames: Frames) -> None:
    """Store ``frames`` in ``ds``: in the native layout it was read in, or uncompressed."""
    lay = frames.layout
    if frames.array.shape != (lay.frames, lay.rows, lay.cols, lay.samples):
        raise PluginError("the frames do not match the layout they are written in")
    if frames.encoded is None:
        value = bytes(ds.PixelData)
        raw = pack(frames.array, lay)
        ds.PixelData = raw + value[len(raw):]  # any padding after the samples stays as it was
        return
    data = pack(frames.array, lay)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if np.dtype(lay.dtype).itemsize == 1 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = frames.photometric
    if lay.samples > 1:
        ds.PlanarConfiguration = 0


def to_native(ds: Dataset) -> bytes | None:
    """Decode compressed pixel data in place (stored uncompressed); the original encoded value,
    or None when it was uncompressed already (and is left untouched)."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    frames = read(ds)
    write(ds, frames)
    return frames.encoded


def pack(array: np.ndarray, layout: Layout) -> bytes:
    """``array`` (frames, rows, cols, samples) as stored bytes in ``layout``, without padding."""
    out = array.transpose(0, 3, 1, 2) if layout.planar else array
    return np.ascontiguousarray(out, dtype=layout.dtype).tobytes()


def native_layout(ds: Dataset) -> Layout:
    """The layout of native pixel data (see ``is_native``)."""
    bits = int(ds.BitsAllocated)
    order = "|" if bits == 8 else ("<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">")
    spp = int(ds.get("SamplesPerPixel", 1))
    layout = Layout(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns), spp,
                    f"{order}{'i' if int(ds.get('PixelRepresentation', 0)) else 'u'}{bits // 8}",
                    spp > 1 and int(ds.get("PlanarConfiguration", 0)) == 1)
    if min(layout.frames, layout.rows, layout.cols, layout.samples) < 1:
        raise PluginError("the image has no rows, columns, frames or samples")
    if len(ds.PixelData) < layout.image_bytes:
        raise PluginError("pixel data is shorter than its Rows, Columns and frames say")
    return layout


def unpack(value: bytes, layout: Layout) -> np.ndarray:
    """The samples of a native value as (frames, rows, cols, samples), native byte order (a copy)."""
    flat = np.frombuffer(value, layout.dtype, layout.count)
    lay = layout
    shaped = (flat.reshape(lay.frames, lay.samples, lay.rows, lay.cols).transpose(0, 2, 3, 1) if lay.planar
              else flat.reshape(lay.frames, lay.rows, lay.cols, lay.samples))
    return shaped.astype(np.dtype(lay.dtype).newbyteorder("="))


def _decode(ds: Dataset) -> tuple[np.ndarray, str]:
    """(frames, rows, cols, samples) and their photometric interpretation (YBR becomes RGB),
    frame by frame: pydicom's whole-volume colour conversion would hold the volume in float64."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    out: np.ndarray | None = None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    count = 0
    for arr, meta in get_decoder(ds.file_meta.TransferSyntaxUID).iter_array(ds, as_rgb=True):
        if out is None:
            out = np.empty((frames, int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))), arr.dtype)
        out[count] = arr.reshape(out.shape[1:])
        count += 1
        value = meta.get("photometric_interpretation", photometric)
        photometric = str(getattr(value, "value", value))
    if out is None or count != frames:
        raise ValueError("fewer frames decoded than Number of Frames says")
    return out, photometric


def _decode_whole(ds: Dataset, photometric: str) -> tuple[np.ndarray, str]:
    spp = int(ds.get("SamplesPerPixel", 1))
    array = np.ascontiguousarray(ds.pixel_array)
    if spp == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom converts YBR (and JPEG 2000's RCT/ICT) to RGB when it decodes
    return array.reshape(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns), spp), photometric


def _read(ds: Dataset) -> Frames:
    if not has_pixels(ds):
        raise PluginError("the object has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("BitsAllocated", 0)) == 1:
        raise PluginError(f"{ONE_BIT} is not supported")
    if is_native(ds):
        layout = native_layout(ds)
        return Frames(unpack(bytes(ds.PixelData), layout), layout, photometric, encoded=None)
    try:
        try:
            array, photometric = _decode(ds)
        except Exception:  # noqa: BLE001 - pydicom's frame iterator fails on a few files its whole-volume path reads
            array, photometric = _decode_whole(ds, photometric)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: cannot protect
        raise PluginError(f"pixel data cannot be decoded ({ds.file_meta.TransferSyntaxUID.name}: "
                          f"{type(exc).__name__})") from None
    if array.dtype.itemsize * 8 != int(ds.BitsAllocated):
        raise PluginError("decoded pixel data does not match Bits Allocated")
    f, r, c, spp = array.shape
    layout = Layout(f, r, c, spp, array.dtype.newbyteorder("<").str, planar=False)
    return Frames(array, layout, photometric, encoded=bytes(ds.PixelData))
