"""The original object, cut so that it can be put back byte for byte.

The recovery envelope keeps the original's bytes around the pixel data value (preamble,
file meta, every header element, the pixel element's own header, anything after it),
while the pixel value itself travels in the protected object, changed or not by the
privacy transforms. Restoring is then a concatenation, and the SHA-256 of the original
proves it: no re-encoding, so no doubt about undefined lengths, padding or odd VRs.

An object whose pixel value cannot be located in its bytes (deflated transfer syntax,
unusual encodings) keeps all of its bytes in the envelope instead.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

PIXEL_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)


@dataclass(frozen=True)
class Cut:
    """``prefix + pixel value + suffix`` is the original; ``pixel_tag`` None: all in prefix."""

    prefix: bytes
    suffix: bytes
    pixel_tag: int | None
    digest: bytes

    def join(self, pixel_value: bytes | None) -> bytes:
        if self.pixel_tag is None:
            return self.prefix
        assert pixel_value is not None
        return self.prefix + pixel_value + self.suffix

    def verify(self, restored: bytes) -> bool:
        return hashlib.sha256(restored).digest() == self.digest


def pixel_tag_of(ds: Dataset) -> int | None:
    """The top-level pixel data element of ``ds`` (integer, float or double), if any."""
    return next((t for t in PIXEL_TAGS if t in ds), None)


def value_offset(ds: Dataset) -> int | None:
    """Where the pixel value of ``ds`` starts in the bytes it was read from, while its pixel
    element is still as read (pydicom converts an element on first access)."""
    tag = pixel_tag_of(ds)
    elem = ds.get_item(tag) if tag is not None else None
    return elem.value_tell if isinstance(elem, RawDataElement) else None


def cut(raw: bytes, ds: Dataset, value_at: int | None = None) -> Cut:
    """Cut ``raw`` (the original file bytes) around the pixel value of ``ds`` (read from it);
    ``value_at`` (``value_offset`` of ``ds`` as read) saves reading the header again."""
    digest = hashlib.sha256(raw).digest()
    tag = pixel_tag_of(ds)
    if tag is None:
        return Cut(prefix=raw, suffix=b"", pixel_tag=None, digest=digest)
    value = ds[tag].value
    if value and value_at is not None and raw[value_at : value_at + len(value)] == value:
        return Cut(raw[:value_at], raw[value_at + len(value) :], tag, digest)
    fp = io.BytesIO(raw)
    pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    start = fp.tell()
    if value:
        for header_len in (12, 8):  # explicit VR (OB/OW/OF/OD) or implicit VR headers
            begin = start + header_len
            if raw[begin : begin + len(value)] == value:
                return Cut(raw[:begin], raw[begin + len(value) :], tag, digest)
    return Cut(prefix=raw, suffix=b"", pixel_tag=None, digest=digest)


def dataset_bytes(data: bytes) -> bytes:
    """The encoded dataset after a file's meta group: what a modality sends over DICOM.

    The gateway's copy of a received object carries pynetdicom's file meta; comparing
    with a modality's file means comparing what follows the meta.
    """
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) group length, UL
    return data[144 + meta_length :]
