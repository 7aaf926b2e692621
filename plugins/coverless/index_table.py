"""The index table (paper section 4.8): characters <-> hashes <-> row numbers. Method 1
only: it demaps version-1 records (method 2 carries bits in cells, ``carriers``).

The distinct hashes of the usable rows, sorted, are mapped to the alphabet in turn (and
round again when there are more hashes than characters). A character is carried by the
number of a row whose hash maps to it; of the candidate rows the one with the largest
margin is chosen (the paper allows any), so extraction is as robust as the series allows.

The alphabet covers DICOM identity, not only the paper's 62 letters and digits: person
names (``^`` and ``=`` separators), IDs, dates, ages, institutions: every printable ASCII
character except the multi-value separator ``\\``. Its order puts what identity uses most
first (upper case, digits, separators), because a small table covers only the front of it.
"""

from __future__ import annotations

import string

import numpy as np

from plugins.coverless.hashing import RowHashes

ALPHABET = (
    string.ascii_uppercase + string.digits + " ^-.,/'=" + string.ascii_lowercase
    + "".join(c for c in string.punctuation if c not in " ^-.,/'=\\")
)
PAPER_ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits


class DemapError(ValueError):
    """A row number does not lead to a character in the rebuilt table."""


class IndexTable:
    def __init__(self, rows: RowHashes, alphabet: str = ALPHABET) -> None:
        usable = np.flatnonzero(rows.usable)
        self.distinct = sorted({int(rows.hashes[r]) for r in usable})
        self.char_of = {h: alphabet[i % len(alphabet)] for i, h in enumerate(self.distinct)}
        self._rows = rows
        by_char: dict[str, list[int]] = {}
        # largest margin first, then the lower row number: the same choice on every run
        for r in sorted(usable.tolist(), key=lambda r: (-int(rows.margins[r]), r)):
            by_char.setdefault(self.char_of[int(rows.hashes[r])], []).append(r)
        self.rows_of = by_char
        self.alphabet = alphabet

    def covered(self) -> set[str]:
        return set(self.rows_of)

    def missing(self, text: str) -> set[str]:
        """Characters of ``text`` this table cannot carry."""
        return set(text) - self.covered()

    def encode(self, text: str) -> list[int]:
        """Row numbers that carry ``text`` (every character must be covered)."""
        return [self.rows_of[c][0] for c in text]

    def decode(self, row_numbers: list[int]) -> str:
        out = []
        for r in row_numbers:
            if not 0 <= r < len(self._rows.hashes) or not self._rows.usable[r]:
                raise DemapError("a row number is not a usable row of the rebuilt table")
            out.append(self.char_of[int(self._rows.hashes[r])])
        return "".join(out)
