"""The redaction stage: find burned-in text, blank it in every frame, keep what was there.

Runs before a route's privacy plugin and has the same shape (gateway.plugin.Transform).
Each instance's record is what restore needs and nothing else, so restore runs with
default settings:

- ``b""``: nothing was blanked (no pixels, or no text found); the object is untouched;
- ``N`` + header (4-byte length, JSON) + zlib(values): native pixel data edited in place; the header lists the
  boxes, the values are the original samples of each box in every frame;
- ``T`` + header + the original pixel value: the object had to be decoded (compressed, or a
  layout that cannot be edited in place) and travels uncompressed; restore puts the
  original encoded value back as it was, byte for byte.

Burned In Annotation (0028,0301) becomes NO when text was blanked, and the
de-identification method codes gain the Clean Pixel Data Option (113101).
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from gateway import frames
from gateway.plugin import Context, PluginError
from gateway.redaction import ocr, parallel, pixels
from gateway.redaction import rules as region_rules
from gateway.redaction.boxes import Box, clip, mask_of, text_bands
from gateway.redaction.ocr_matching import Matcher
from gateway.redaction.parallel import cheap_boxes

DETECTORS = ("rules", "roi", "tophat", "ocr")
log = logging.getLogger("gateway.redaction")


class RedactionStage:
    """Burned-in text redaction, configured by a route's ``redaction:`` mapping.

    Settings: ``detectors`` (any of rules, roi, tophat, ocr; default all four), ``rules`` (site
    region rules, see gateway.redaction.rules), ``default_rules`` (use the shipped rules),
    ``ocr_text`` ("identifying": words matching the instance's identity or general
    identity patterns; "all": every recognised word), ``ocr_frames`` (how many frames of a
    multi-frame image are searched in full, spread evenly), ``ocr_scale`` (enlargement
    before OCR), ``pad`` (pixels added around every box) and ``workers`` (processes that
    search the frames of a multi-frame image; 1 searches in this process).

    OCR reads only the rows where the other detectors found text (the whole width, so a
    line is read whole); it reads whole frames only on a route without roi and tophat.
    In a multi-frame image the cheap detectors search every frame: a frame where they find
    text that no searched frame had is read by OCR too, and every box is blanked in every
    frame. So a static overlay is read once, and text on one frame of ninety is still found.
    """

    name = "redaction"
    series_level = False
    refuses = (frames.FLOAT, frames.ONE_BIT, frames.UNDECODABLE)

    def __init__(self, detectors: Sequence[str] = DETECTORS, rules: list[dict[str, Any]] | None = None,
                 default_rules: bool = True, ocr_text: str = "identifying", ocr_frames: int = 2,
                 ocr_scale: int = 2, pad: int = 2, workers: int = 2, roi_frames: int | None = None) -> None:
        if roi_frames is not None:  # configs written before every frame was searched
            log.warning("redaction setting roi_frames is no longer used: every frame of a clip is searched")
        unknown = set(detectors) - set(DETECTORS)
        if unknown or ocr_text not in ("identifying", "all") or min(ocr_frames, ocr_scale, workers) < 1 or pad < 0:
            raise PluginError(f"redaction settings are invalid (detectors from {DETECTORS}, ocr_text "
                              "'identifying' or 'all', positive frame counts, scale and workers)")
        self.detectors = tuple(detectors)
        self.rules = region_rules.load(rules, default_rules)
        self.ocr_text = ocr_text
        self.ocr_frames, self.ocr_scale, self.pad, self.workers = ocr_frames, ocr_scale, pad, workers
        self.cheap = tuple(d for d in ("roi", "tophat") if d in self.detectors)

    # -- protect --------------------------------------------------------------------

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        matcher = Matcher(ctx.identity)
        return [self._protect_one(ds, matcher) for ds in series]

    def find(self, ds: Dataset, grey: np.ndarray, matcher: Matcher) -> list[Box]:
        """Boxes to blank in ``ds`` whose frames (as grey images) are ``grey``."""
        n, rows, cols = grey.shape
        ruled = region_rules.detect(ds, self.rules) if "rules" in self.detectors else []
        sample = _spread(n, self.ocr_frames)
        found = list(ruled)
        for f in sample:
            cheap = [b for boxes in cheap_boxes(grey[f], self.cheap).values() for b in boxes]
            found += cheap + self._read(grey[f], ruled + cheap, matcher)
        if n > len(sample) and self.cheap:
            known = mask_of(found, rows, cols)
            rest = [f for f in range(n) if f not in sample]
            for f, by_detector in zip(rest, parallel.map_frames(grey, rest, self.cheap, self.workers), strict=True):
                new = self._confirmed(grey[f], {d: [b for b in boxes if _news(b, known)]
                                                for d, boxes in by_detector.items()}, known)
                if new:  # text that the searched frames did not show
                    new += self._read(grey[f], new, matcher)
                    for top, left, bottom, right in new:
                        known[top:bottom, left:right] = True
                    found += new
        return [b for b in (clip(box, rows, cols, self.pad) for box in found) if b]

    def _confirmed(self, frame: np.ndarray, new: dict[str, list[Box]], known: np.ndarray) -> list[Box]:
        """The new boxes of a frame outside the sample that a second opinion holds to be text.

        In one frame of a clip, speckle now and then makes a small line of marks for one
        detector; blanked in every frame, ninety frames of those add up. So a new box
        counts when the other cheap detector found new text there too, or OCR reads a word
        of two letters or digits in it outside the known boxes. Without OCR, or with one
        cheap detector, every new box counts.
        """
        boxes = [b for bs in new.values() for b in bs]
        if len(new) < 2 or "ocr" not in self.detectors or not boxes:
            return boxes
        agreed = [b for d, bs in new.items() for b in bs
                  if any(_overlap(b, o) for other, os in new.items() if other != d for o in os)]
        doubted = [b for b in boxes if b not in agreed]
        if doubted:
            rows, cols = frame.shape
            regions = [r for r in (clip(b, rows, cols, 4) for b in doubted) if r]
            words = [w.box for w in ocr.read(frame, scale=self.ocr_scale, regions=regions)
                     if len(re.sub(r"[^0-9A-Za-z]", "", w.text)) >= 2 and not _known(w.box, known)]
            agreed += [b for b in doubted if any(_overlap(b, w) for w in words)]
        return agreed

    def _read(self, frame: np.ndarray, candidates: list[Box], matcher: Matcher) -> list[Box]:
        """OCR's boxes in the rows of ``candidates`` (the whole frame without roi and tophat)."""
        if "ocr" not in self.detectors:
            return []
        regions = text_bands(candidates, *frame.shape) if self.cheap else None
        if regions == []:
            return []
        words = ocr.read(frame, scale=self.ocr_scale, regions=regions)
        chosen = words if self.ocr_text == "all" else matcher.select(words)
        if regions is None:
            return [w.box for w in chosen]
        return [w.box for w in chosen if any(_on_line(w.box, c) for c in candidates)]

    def _protect_one(self, ds: Dataset, matcher: Matcher) -> bytes:
        if pixels.pixel_tag(ds) is None:
            return b""
        px = pixels.load(ds)
        boxes = self.find(ds, px.grey(), matcher)
        if not boxes:
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
                log.warning("an object flagged with burned-in annotation had no text found; flag kept")
            return b""
        original_value = bytes(ds.PixelData)
        originals = [px.array[:, top:bottom, left:right, :].copy() for top, left, bottom, right in boxes]
        fill = px.fill()
        for top, left, bottom, right in boxes:
            px.array[:, top:bottom, left:right, :] = fill
        pixels.store(ds, px)
        _mark_clean(ds)
        if not px.native:
            return _pack(b"T", {"boxes": boxes}, original_value)
        values = b"".join(o.tobytes() for o in originals)
        return _pack(b"N", {"boxes": boxes, "dtype": px.array.dtype.str}, zlib.compress(values, 1))

    # -- restore --------------------------------------------------------------------

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        for ds, record in zip(series, records, strict=True):
            if not record:
                continue
            kind, head, body = _unpack(record)
            if kind == b"T":
                ds.PixelData = body
            else:
                _restore_native(ds, head, body)


def boxes_of(record: bytes) -> list[Box]:
    """The boxes a record says were blanked (for audits and tests)."""
    return [tuple(b) for b in _unpack(record)[1]["boxes"]] if record else []


def _pack(kind: bytes, head: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(head).encode()
    return kind + struct.pack(">I", len(text)) + text + body


def _unpack(record: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    try:
        kind = record[:1]
        (size,) = struct.unpack_from(">I", record, 1)
        head = json.loads(record[5 : 5 + size])
    except (struct.error, ValueError):
        raise PluginError("the redaction record is malformed") from None
    if kind not in (b"T", b"N"):
        raise PluginError("unknown redaction record format")
    return kind, head, record[5 + size :]


def _restore_native(ds: Dataset, head: dict[str, Any], body: bytes) -> None:
    try:
        values = zlib.decompress(body)
        dtype = np.dtype(head["dtype"])
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.SamplesPerPixel)
        pos = 0
        boxes_values = []
        for top, left, bottom, right in head["boxes"]:
            count = frames * (bottom - top) * (right - left) * spp
            chunk = np.frombuffer(values, dtype, count, pos).reshape(frames, bottom - top, right - left, spp)
            boxes_values.append(((top, left, bottom, right), chunk))
            pos += count * dtype.itemsize
        if pos != len(values) or not pixels.is_native(ds):
            raise ValueError("size")
        pixels.restore_native(ds, boxes_values)
    except (ValueError, KeyError, zlib.error, struct.error):
        raise PluginError("the redaction record does not fit this object's pixel data") from None


def _mark_clean(ds: Dataset) -> None:
    ds.BurnedInAnnotation = "NO"
    if "DeidentificationMethodCodeSequence" in ds:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113101", "DCM", "Clean Pixel Data Option"
        ds.DeidentificationMethodCodeSequence.append(item)


def _news(box: Box, known: np.ndarray) -> bool:
    """Does ``box`` (a line found in one frame) show text beyond the ``known`` boxes?

    A known line seen again in a clip often comes out a little larger, where the speckle
    beside it joins it in that frame: a strip a few rows high above or below, or a short
    overhang at an end. Blanking each in every frame would add up to a band of anatomy
    over a long clip, so on a line that is mostly known only an uncovered block at least
    half the line's height and one and a half heights wide (three glyphs) is new text.
    """
    top, left, bottom, right = box
    unseen = ~known[top:bottom, left:right]
    if not unseen.any():
        return False
    if unseen.mean() > 0.5:
        return True
    height = bottom - top
    block = np.ones((max(height // 2, 1), height * 3 // 2), bool)
    return bool(ndimage.binary_erosion(unseen, block).any())


def _known(box: Box, known: np.ndarray) -> bool:
    return bool(known[box[0] : box[2], box[1] : box[3]].all())


def _overlap(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _on_line(word: Box, line: Box) -> bool:
    """Does ``word`` lie within ``line``'s rows (a quarter of its height either way)?

    OCR in a band lengthens the lines found; a "word" reaching into the tissue above or
    below (tesseract reading texture at a band's cut edge) is not text of that line.
    """
    slack = max(3, (line[2] - line[0]) // 4)
    return word[0] >= line[0] - slack and word[2] <= line[2] + slack


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` frame indices spread evenly over ``n`` frames, first and last included."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
