"""The PHI gate: the last look at an outgoing object before it may leave.

It searches every string element (sequences, private blocks and file meta included) and
the raw encoded bytes for each identifying value the de-identification took out of the
original. Any hit stops the whole series. The gate is deliberately independent of the
profile code it checks: a bug there (or an identifier in an unexpected attribute) is
caught here.

Matching: whole values of 4 characters or more as case-insensitive substrings of the
text; values made of digits only, and each part of a person name (3 characters or
more), as whole words, so that a 5-digit MRN does not match inside a measurement;
whole values of 6 bytes or more also in the raw bytes (pixel data, binary private
values), where a chance match in random data is about one in 2^48 per position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.envelope import GROUP as ENVELOPE_GROUP

_STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT"}
_WORD = re.compile(r"[^0-9A-Z]+")
# Words too common to mean identity on their own.
_COMMON = {"THE", "AND", "FOR", "MR", "MRS", "MS", "DR", "JR", "SR", "MD", "PHD"}


@dataclass(frozen=True)
class Hit:
    """Where an identifying value was found (the value itself is never reported)."""

    where: str
    kind: str


class Needles:
    """The identifying values of one series, prepared for matching."""

    def __init__(self, values: set[str], names: set[str]) -> None:
        self.substrings: set[str] = set()
        self.words: set[str] = set()
        self.raw: set[bytes] = set()
        for value in values | names:
            norm = _norm(value)
            if norm.isdigit():
                if len(norm) >= 4:
                    self.words.add(norm)
            elif len(norm) >= 4:
                self.substrings.add(norm)
            if len(value.strip()) >= 6:
                self.raw.add(value.strip().encode("utf-8", "ignore"))
        for name in names:
            self.words.update(w for w in _WORD.split(_norm(name)) if len(w) >= 3 and w not in _COMMON)

    def __bool__(self) -> bool:
        return bool(self.substrings or self.words or self.raw)


def scan(ds: Dataset, encoded: bytes, needles: Needles) -> list[Hit]:
    """All places in ``ds`` / ``encoded`` where an identifying value shows."""
    hits: list[Hit] = []
    if getattr(ds, "file_meta", None) is not None:
        _scan_dataset(ds.file_meta, needles, hits, "meta")
    _scan_dataset(ds, needles, hits, "")
    for needle in needles.raw:
        if needle in encoded:
            hits.append(Hit(where="encoded bytes", kind="raw"))
            break
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
        for text in _texts(elem.value, elem.VR, elem.tag.is_private):
            kind = _match(_norm(text), needles)
            if kind:
                hits.append(Hit(where=where, kind=kind))


def _texts(value: object, vr: str, private: bool) -> list[str]:
    if vr in _STRING_VRS:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        return [str(v) for v in values if v not in (None, "")]
    if private and isinstance(value, bytes):  # UN private data may well be text
        return [value.decode("latin-1")]
    return []


def _match(text: str, needles: Needles) -> str | None:
    if any(s in text for s in needles.substrings):
        return "value"
    if needles.words and needles.words.intersection(_WORD.split(text)):
        return "word"
    return None


def _norm(text: str) -> str:
    return " ".join(str(text).upper().replace("^", " ").split())
