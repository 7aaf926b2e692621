"""Decode a verified original for a workstation that takes only uncompressed data.

A restored original keeps its transfer syntax, byte for byte; when the receiving
workstation accepted none of the compressed syntax but an uncompressed little endian one,
the original (already checked against its digest by ``gateway.restore``) is decoded here,
with pydicom and its pixel data handlers (pylibjpeg, GDCM), and written in explicit or
implicit VR little endian. The result is a new encoding of the same image, not the
original's bytes: callers report the sub-operation as transcoded.

Pure functions, no network and no keys: input bytes in, output bytes out.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

FALLBACKS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# PS3.3 C.7.6.1.1.5.1: the method that made a lossy original, kept after decoding.
_LOSSY_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15", "1.2.840.10008.1.2.4.111": "ISO_18181_1",
}


class TranscodeError(Exception):
    """The original cannot be decoded (no decoder for its syntax, damaged pixel data)."""


def choose(original: UID | str, accepted: Iterable[UID | str]) -> UID | None:
    """The transfer syntax to send in: the original's where accepted, else the first
    accepted fallback (explicit, then implicit VR little endian); None when neither fits."""
    offered = {str(ts) for ts in accepted}
    if str(original) in offered:
        return UID(str(original))
    return next((ts for ts in FALLBACKS if ts in offered), None)


def transcode(original: bytes, target: UID | str) -> bytes:
    """``original`` (a complete DICOM file) re-encoded in ``target``, explicit or implicit
    VR little endian, its pixel data decoded where it was compressed."""
    target = UID(str(target))
    if target not in FALLBACKS:
        raise ValueError(f"transcoding writes only {', '.join(ts.name for ts in FALLBACKS)}, not {target.name}")
    ds: Dataset = pydicom.dcmread(io.BytesIO(original))
    source = UID(str(ds.file_meta.TransferSyntaxUID))
    if source == target:
        return original
    if source.is_compressed and "PixelData" in ds:
        _decode(ds, source)
    elif not source.is_little_endian:
        ds = _as_little_endian(ds)
    ds.file_meta.TransferSyntaxUID = target
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target.is_implicit_VR, little_endian=True)
    return out.getvalue()


def _decode(ds: Dataset, source: UID) -> None:
    try:
        # pydicom picks an installed handler (YBR JPEG comes back as RGB); by default it would
        # also give the object a new SOP Instance UID: the workstation must get the original's.
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - decoders raise their own types for damaged data
        raise TranscodeError(f"{source.name} pixel data could not be decoded ({type(exc).__name__})") from None
    if str(source) in _LOSSY_METHOD and ds.get("LossyImageCompression") != "01":
        ds.LossyImageCompression = "01"  # the decoded image still carries the loss
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[str(source)]


def _as_little_endian(ds: Dataset) -> Dataset:
    """Big endian originals: every element read as a value, pixel values as numbers, then
    written back little endian. Other OW/OF/OD/OL values (rare in headers) are refused
    rather than written in the wrong byte order."""
    swapped_bytes = [e.keyword or str(e.tag) for e in ds.iterall()
                     if e.VR in ("OW", "OF", "OD", "OL", "OV") and e.tag != 0x7FE00010]
    if swapped_bytes:
        raise TranscodeError(f"big endian original with {swapped_bytes[:3]}: not converted to little endian")
    if "PixelData" in ds:
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.set_original_encoding(ds.original_encoding[0], True, ds.original_character_set)
    return ds
