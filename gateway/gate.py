"""The PHI gate: the last look at an outgoing object before it may leave.

It searches every string element (sequences, private blocks and file meta included) and
the raw encoded bytes for each identifying value the de-identification took out of the
original. Any hit stops the whole series. The gate is deliberately independent of the
profile code it checks: a bug there, or identity typed into an unexpected attribute, is
caught here.

Matching works on words (letters, digits and ``_``; case and punctuation ignored): a
value hits where its words appear in a row, and each part of a patient's name (3
characters or more) hits on its own in free text (not in coded values, where a
patient called Head would stop every head scan). Word matching keeps a 5-digit MRN from matching
inside a measurement. Values of 6 bytes or more are also searched in the raw bytes
(pixel data, binary private values), where a chance match in random data is about one
in 2^48 per position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.envelope import GROUP as ENVELOPE_GROUP

_STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT"}
# Where a single part of a name is looked for: free text, not coded values (CS) or UIDs.
_FREE_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_NON_WORD = re.compile(r"[^0-9A-Z_]+")
# Name parts too common to mean identity on their own.
_COMMON = {"THE", "AND", "FOR", "MRS", "PHD"}


@dataclass(frozen=True)
class Hit:
    """Where an identifying value was found (the value itself is never reported)."""

    where: str
    kind: str


def words(text: str) -> str:
    """``text`` as upper-case words separated by single spaces, padded with spaces."""
    return " " + " ".join(w for w in _NON_WORD.split(str(text).upper()) if w) + " "


class Needles:
    """The identifying values of one series, prepared for matching."""

    def __init__(self, identifiers: set[str], patient_names: set[str]) -> None:
        self.phrases: set[str] = set()
        self.name_parts: set[str] = set()
        raw: set[bytes] = set()
        for value in identifiers | patient_names:
            phrase = words(value)
            if len(phrase.strip()) >= 3:
                self.phrases.add(phrase)
            if len(value.strip()) >= 6:
                raw.add(value.strip().encode("utf-8", "ignore"))
        for name in patient_names:
            self.name_parts.update(f" {w} " for w in words(name).split() if len(w) >= 3 and w not in _COMMON)
        self.raw = sorted(raw)

    def in_bytes(self, data: bytes) -> bool:
        """A whole-word occurrence of a value in ``data`` (``bytes.find`` first: a regex
        with look-arounds over half a megabyte of pixels costs 80 ms, this about 1 ms)."""
        for needle in self.raw:
            start = data.find(needle)
            while start != -1:
                end = start + len(needle)
                if not _word_byte(data, start - 1) and not _word_byte(data, end):
                    return True
                start = data.find(needle, start + 1)
        return False

    def match(self, text: str, vr: str) -> bool:
        padded = words(text)
        if any(p in padded for p in self.phrases):
            return True
        return vr in _FREE_TEXT_VRS and any(p in padded for p in self.name_parts)


def scan(ds: Dataset, encoded: bytes, needles: Needles) -> list[Hit]:
    """All places in ``ds`` / ``encoded`` where an identifying value shows."""
    hits: list[Hit] = []
    if getattr(ds, "file_meta", None) is not None:
        _scan_dataset(ds.file_meta, needles, hits, "meta")
    _scan_dataset(ds, needles, hits, "")
    if needles.in_bytes(encoded):
        hits.append(Hit(where="encoded bytes", kind="raw"))
    return hits


def _scan_dataset(ds: Dataset, needles: Needles, hits: list[Hit], path: str) -> None:
    for elem in ds:
        where = f"{path}{elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                _scan_dataset(item, needles, hits, f"{where}[{i}].")
            continue
        if elem.tag.group == ENVELOPE_GROUP and elem.VR == "OB":
            continue  # ciphertext: covered by the raw scan only
        vr = "LT" if elem.tag.is_private else elem.VR
        if any(needles.match(text, vr) for text in _texts(elem.value, elem.VR, elem.tag.is_private)):
            hits.append(Hit(where=where, kind="text"))


def _word_byte(data: bytes, index: int) -> bool:
    return 0 <= index < len(data) and (chr(data[index]).isalnum() and data[index] < 128 or data[index] == 0x5F)


def _texts(value: object, vr: str, private: bool) -> list[str]:
    if vr in _STRING_VRS:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        return [str(v) for v in values if v not in (None, "")]
    if private and isinstance(value, bytes):  # UN private data may well be text
        return [value.decode("latin-1")]
    return []
