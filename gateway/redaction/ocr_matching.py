"""Is a recognised word identifying? Compared with the instance's own identity and with
general patterns (dates, IDs, DICOM-style names).

OCR misreads: ``^`` comes back as ``*`` or ``~``, ``0`` as ``O``, a character goes
missing at the edge of a word. So words are split on anything that is not a letter or a
digit, compared by similarity (difflib's ratio) rather than equality, and dates are
compared by their digits in every common order.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from gateway.redaction.ocr import Word

NAME_KEYS = ("PatientName", "ReferringPhysicianName", "InstitutionName")
ID_KEYS = ("PatientID", "AccessionNumber", "OtherPatientIDs")
DATE_KEYS = ("PatientBirthDate", "StudyDate")
# Words that announce identity: the rest of their line is redacted whatever OCR made of it.
LABELS = {"NAME", "PATIENT", "PAT", "DOB", "BIRTH", "BORN", "ID", "MRN", "PID", "ACC", "ACCESSION", "GEB"}
DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{2,4}$|^(19|20)\d{6}$|^\d{2}[./-]?[A-Z]{3}[./-]?\d{2,4}$")
NAME_MARK = re.compile(r"[A-Z][*~^][A-Z]")


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9A-Z]+", text.upper()) if t]


def _similar(a: str, b: str) -> bool:
    if len(a) < 4 or len(b) < 4:
        return a == b
    return SequenceMatcher(None, a, b).ratio() >= 0.8


def date_forms(da: str) -> set[str]:
    """The digits of a DICOM date (YYYYMMDD) as it may be printed."""
    if not re.fullmatch(r"\d{8}", da):
        return set()
    y, m, d = da[:4], da[4:6], da[6:]
    return {y + m + d, d + m + y, m + d + y, d + m + y[2:], m + d + y[2:], y[2:] + m + d}


class Matcher:
    """Decides which OCR words to redact, for one instance's identity."""

    def __init__(self, identity: dict[str, str]) -> None:
        self.words: set[str] = set()
        for key in NAME_KEYS:
            self.words |= {t for t in _tokens(identity.get(key, "")) if len(t) >= 2}
        self.ids: set[str] = set()
        for key in ID_KEYS:
            for value in re.split(r"\\", identity.get(key, "")):
                if value.strip():
                    self.ids.add("".join(_tokens(value)))
                    self.words |= {t for t in _tokens(value) if len(t) >= 4}
        self.dates: set[str] = set()
        for key in DATE_KEYS:
            self.dates |= date_forms(identity.get(key, "").strip())

    def identifying(self, text: str) -> bool:
        upper = text.upper()
        tokens = _tokens(upper)
        joined = "".join(tokens)
        if not joined:
            return False
        if DATE.match(upper.strip(".,:;")) or NAME_MARK.search(upper):
            return True
        digits = re.sub(r"\D", "", upper)
        if len(digits) >= 4 and any(digits in form or _similar(digits, form) for form in self.dates):
            return True
        if len(joined) >= 4 and any(_similar(joined, i) or (len(joined) >= 5 and joined in i) for i in self.ids):
            return True
        coded = re.search(r"\d{3,}", joined) and re.search(r"[A-Z]", joined) and "-" in text
        if re.search(r"\d{5,}", joined) or coded:
            return True  # ID-like: long digit runs, or letters and digits joined by dashes
        return any(_similar(t, w) for t in tokens for w in self.words)

    def select(self, words: list[Word]) -> list[Word]:
        """The words to redact: every word of a line that holds identity or an identity label."""
        lines: dict[tuple[int, ...], list[Word]] = {}
        for w in words:
            lines.setdefault(w.line, []).append(w)
        out = []
        for line in lines.values():
            if any(self.identifying(w.text) or set(_tokens(w.text)) & LABELS for w in line):
                out.extend(line)
        return out
