"""Structural verification of a received object, before its C-STORE may answer Success.

pydicom reads what it can and stops quietly at a cut: a header parse says nothing about
whether the object arrived whole. This walks the encoded object's structure itself, without
reading any value but a few pixel attributes (constant memory, seeks over pixel data):
every declared length must lie within what arrived and within its sequence or item;
sequences and items must be closed by their delimiters; native pixel data must be as long
as Rows x Columns x Samples x Bits Allocated x frames says; encapsulated pixel data must be
a Basic Offset Table and at least one fragment, all items, ended by a sequence delimiter.

A problem raises ``Damaged`` whose text names the problem (never a value) and fits a DICOM
Error Comment (64 characters). On the way it reads the few top-level values the spool keeps
of an object (``Header``), so the listener does not parse the header a second time.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_TAGS = {0x7FE00010: None, 0x7FE00008: 32, 0x7FE00009: 64}  # Pixel, Float, Double Float Pixel Data
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
# The top-level values the walk reads: what the pixel data must agree with, and the header.
_ATTRIBUTES = {0x00080016: "sop_class", 0x00080018: "sop_instance", 0x00080060: "modality", 0x0020000E: "series",
               0x00280002: "samples", 0x00280004: "photometric", 0x00280008: "frames", 0x00280010: "rows",
               0x00280011: "columns", 0x00280100: "bits"}
_TEXT = {0x00080016, 0x00080018, 0x00080060, 0x0020000E, 0x00280004, 0x00280008}  # UI, CS, IS
# Real objects nest a handful of levels; far deeper nesting only exhausts the readers after us.
MAX_DEPTH = 64


class Damaged(Exception):
    """The object did not arrive whole or is malformed; the message names the problem."""


@dataclass(frozen=True)
class Header:
    """What the spool keeps of an object, read by the walk: SOP Class and Instance UIDs,
    Series Instance UID, Modality (empty where absent)."""

    sop_class: str
    sop_instance: str
    series: str
    modality: str


@dataclass
class _Image:
    """The top-level attributes the pixel data must agree with, and the header's."""

    values: dict[str, object] = field(default_factory=dict)
    pixel_tag: int | None = None
    pixel_length: int | None = None


def verify(path: Path) -> Header:
    """Raise ``Damaged`` unless the DICOM file at ``path`` is structurally whole; return
    its header values."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            syntax = _skip_file_meta(fh, size)
            if syntax.is_deflated:
                return _verify_deflated(path)
            image = _walk(fh, fh.tell(), size, syntax.is_implicit_VR, syntax.is_little_endian)
        _check_pixels(image, syntax)
    except (struct.error, ValueError):  # a short read in the file meta, an unknown transfer syntax
        raise Damaged("file meta cut short or transfer syntax unknown") from None
    return Header(*(str(image.values.get(name) or "") for name in ("sop_class", "sop_instance", "series", "modality")))


def _skip_file_meta(fh: BinaryIO, size: int) -> UID:
    """Position ``fh`` at the data set; return its transfer syntax (from the file meta)."""
    fh.seek(128)
    if fh.read(4) != b"DICM":
        fh.seek(0)  # no preamble: a bare data set
        return _guess_syntax(fh)
    syntax = ""
    while True:
        start = fh.tell()
        head = fh.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            fh.seek(start)
            return UID(syntax) if syntax else _guess_syntax(fh)
        elem, vr = struct.unpack("<H", head[2:4])[0], head[4:6]
        length = struct.unpack("<L", fh.read(4))[0] if vr in LONG_VRS else struct.unpack("<H", head[6:8])[0]
        if length == UNDEFINED or fh.tell() + length > size:
            raise Damaged("file meta element length past the end")
        value = fh.read(length)
        if elem == 0x0010:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")


def _guess_syntax(fh: BinaryIO) -> UID:
    """No transfer syntax named: little endian, explicit VR if the first element looks it
    (as pydicom guesses)."""
    start = fh.tell()
    head = fh.read(6)
    fh.seek(start)
    explicit = len(head) == 6 and b"AA" <= head[4:6] <= b"ZZ"
    return UID("1.2.840.10008.1.2.1" if explicit else "1.2.840.10008.1.2")


def _walk(fh: BinaryIO, start: int, size: int, implicit: bool, little: bool) -> _Image:
    """Walk the data set's elements, sequences, items and fragments without recursion."""
    walker = _Walker(fh, size, implicit, little)
    fh.seek(start)
    while walker.stack:
        walker.step()
    return walker.image


class _Walker:
    """The state of one walk: open containers, each ``(kind, end offset or None for
    undefined length)`` with kind ``ds`` (data set or item) or ``sq``."""

    def __init__(self, fh: BinaryIO, size: int, implicit: bool, little: bool) -> None:
        endian = "<" if little else ">"
        self.fh, self.size, self.implicit = fh, size, implicit
        self.tags, self.long, self.short = (struct.Struct(endian + "HH"), struct.Struct(endian + "L"),
                                            struct.Struct(endian + "H"))
        self.image = _Image()
        self.stack: list[tuple[str, int | None]] = [("ds", size)]

    def step(self) -> None:
        """Read the next element (or item, or delimiter) of the innermost container."""
        kind, end = self.stack[-1]
        pos = self.fh.tell()
        if end is not None and pos >= end:
            if pos > end:
                raise Damaged("an element runs past the end of its item")
            self.stack.pop()
            return
        head = self.fh.read(8)
        if len(head) < 8:
            raise Damaged("object ends inside an element" if head or end is not None
                          else "a sequence or item is never closed")
        group, elem = self.tags.unpack(head[:4])
        tag = group << 16 | elem
        limit = next(e for _, e in reversed(self.stack) if e is not None)
        if kind == "sq":
            self._item(tag, self.long.unpack(head[4:])[0], end, limit)
        elif tag == ITEM_DELIMITER and end is None:
            self.stack.pop()
        elif group == 0xFFFE:
            raise Damaged("an item or delimiter tag out of place")
        else:
            vr, length = self._vr_and_length(head)
            self._element(tag, vr, length, limit)

    def _item(self, tag: int, length: int, end: int | None, limit: int) -> None:
        if tag == ITEM:
            if length == UNDEFINED:
                self._open(("ds", None))
            elif self.fh.tell() + length > limit:
                raise Damaged("an item length goes past what arrived")
            else:
                self.stack.append(("ds", self.fh.tell() + length))
        elif tag == SEQUENCE_DELIMITER and end is None:
            self.stack.pop()
        else:
            raise Damaged("a sequence holds something other than items")

    def _vr_and_length(self, head: bytes) -> tuple[bytes | None, int]:
        vr = None if self.implicit else head[4:6]
        if vr is not None and not (b"AA" <= vr <= b"ZZ"):
            vr = None  # some writers switch to implicit VR inside sequences; pydicom reads that too
        if vr is None:
            return vr, self.long.unpack(head[4:])[0]
        if vr in LONG_VRS:
            extra = self.fh.read(4)
            if len(extra) < 4:
                raise Damaged("object ends inside an element")
            return vr, self.long.unpack(extra)[0]
        return vr, self.short.unpack(head[6:])[0]

    def _element(self, tag: int, vr: bytes | None, length: int, limit: int) -> None:
        top = len(self.stack) == 1
        if length == UNDEFINED:
            if top and tag in PIXEL_TAGS:
                self.image.pixel_tag, self.image.pixel_length = tag, UNDEFINED
                _walk_fragments(self.fh, self.size, self.long, self.tags)
            else:
                self._open(("sq", None))
            return
        value_at = self.fh.tell()
        if value_at + length > limit:
            raise Damaged("pixel data length goes past what arrived" if top and tag in PIXEL_TAGS
                          else "a declared length goes past what arrived")
        if top and tag in _ATTRIBUTES and length <= 64:
            self.image.values[_ATTRIBUTES[tag]] = _attribute(self.fh.read(length), tag, self.short)
        elif top and tag in PIXEL_TAGS:
            self.image.pixel_tag, self.image.pixel_length = tag, length
        if _is_sequence(vr, tag) and length:
            self.fh.seek(value_at)
            self._open(("sq", value_at + length))
        else:
            self.fh.seek(value_at + length)

    def _open(self, container: tuple[str, int | None]) -> None:
        if len(self.stack) > MAX_DEPTH:
            raise Damaged(f"sequences nested deeper than {MAX_DEPTH // 2} levels")
        self.stack.append(container)


def _is_sequence(vr: bytes | None, tag: int) -> bool:
    if vr is not None:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _walk_fragments(fh: BinaryIO, size: int, length_struct: struct.Struct, tag_struct: struct.Struct) -> None:
    """Encapsulated pixel data: offset table item, fragments, sequence delimiter."""
    items = 0
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise Damaged("encapsulated pixel data ends without delimiter")
        group, elem = tag_struct.unpack(head[:4])
        tag, length = group << 16 | elem, length_struct.unpack(head[4:])[0]
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM:
            raise Damaged("encapsulated pixel data holds a non-item")
        if length == UNDEFINED or fh.tell() + length > size:
            raise Damaged("a pixel data fragment goes past what arrived")
        if items == 0 and length % 4:
            raise Damaged("basic offset table is not a list of offsets")
        items += 1
        fh.seek(length, 1)
    if items < 2:
        raise Damaged("encapsulated pixel data has no fragment")


def _attribute(raw: bytes, tag: int, short_struct: struct.Struct) -> object:
    if tag in _TEXT:
        return raw.rstrip(b"\0 ").decode("ascii", "replace").strip()
    return short_struct.unpack(raw[:2])[0] if len(raw) >= 2 else None


def _check_pixels(image: _Image, syntax: UID) -> None:
    values = image.values
    if image.pixel_tag is None:
        # An image storage object cut at an element boundary parses cleanly: what is
        # missing is its pixel data (Type 1 in every image IOD).
        if (values.get("rows") and values.get("columns")) or "Image Storage" in UID(str(values.get("sop_class"))).name:
            raise Damaged("an image without pixel data")
        return
    if syntax.is_encapsulated and image.pixel_tag == 0x7FE00010:
        if image.pixel_length != UNDEFINED:
            raise Damaged("compressed pixel data is not encapsulated")
        return
    if image.pixel_length == UNDEFINED:
        raise Damaged("native pixel data with undefined length")
    rows, columns = values.get("rows"), values.get("columns")
    bits = PIXEL_TAGS[image.pixel_tag] or values.get("bits")
    if not (isinstance(rows, int) and isinstance(columns, int) and isinstance(bits, int)) or not bits:
        raise Damaged("pixel data without Rows, Columns or Bits Allocated")
    given = values.get("samples")
    samples = given if isinstance(given, int) else 1
    try:
        frames = int(str(values.get("frames") or "1"))
    except ValueError:
        raise Damaged("Number of Frames is not a number") from None
    if frames < 1 or not samples:
        raise Damaged("Number of Frames or Samples per Pixel is zero")
    pixels = rows * columns * samples * frames
    expected = math.ceil(pixels / 8) if bits == 1 else pixels * (bits // 8)
    if values.get("photometric") == "YBR_FULL_422":
        expected = expected // 3 * 2  # two chroma samples per two pixels (PS3.3 C.7.6.3.1.2)
    if (image.pixel_length or 0) < expected:
        raise Damaged("pixel data shorter than rows x columns x frames")


def _verify_deflated(path: Path) -> Header:
    """Deflated data sets (rare) are inflated by pydicom; the pixel length is checked on that."""
    try:
        ds = pydicom.dcmread(path)
        pixel = ds.get("PixelData")
    except (zlib.error, EOFError, ValueError, OSError) as exc:
        raise Damaged(f"deflated data set cannot be read ({type(exc).__name__})") from None
    if pixel is not None and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        image = _Image(values={"rows": ds.get("Rows"), "columns": ds.get("Columns"), "bits": ds.get("BitsAllocated"),
                               "samples": ds.get("SamplesPerPixel", 1), "frames": ds.get("NumberOfFrames"),
                               "photometric": str(ds.get("PhotometricInterpretation", ""))},
                       pixel_tag=0x7FE00010, pixel_length=len(pixel))
        _check_pixels(image, ds.file_meta.TransferSyntaxUID)
    return Header(*(str(ds.get(keyword, "") or "") for keyword in ("SOPClassUID", "SOPInstanceUID",
                                                                  "SeriesInstanceUID", "Modality")))
