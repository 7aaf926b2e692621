"""DICOM PS3.15 Table E.1-1 as a lookup: which action applies to a tag under which options.

The table ships as data (``gateway/data/ps3.15-table-e.1-1.json``, extracted from the
2025 standard), so a new edition is a data update, not a code change.

Where the standard lets the implementer choose between actions (``X/Z``, ``Z/D``,
``X/Z/D``, ``X/D``), the gateway keeps the attribute present whenever the standard
allows it: ``Z`` (empty) when offered, else ``D`` (dummy). A present but empty
attribute is valid for type 2 and 3 attributes alike, so the output stays a valid IOD
without knowing every IOD's attribute types. ``X/Z/U*`` on reference sequences becomes
``U*``: the sequence stays and the UIDs inside it are replaced by their own rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from pydicom.tag import BaseTag

# Option name in the admin config -> column of Table E.1-1, and its CID 7050 code.
OPTIONS: dict[str, tuple[str, str, str]] = {
    "retain_longitudinal_modified_dates": (
        "rtnLongModifDatesOpt", "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_longitudinal_full_dates": (
        "rtnLongFullDatesOpt", "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_patient_characteristics": (
        "rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("rtnDevIdOpt", "113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("rtnInstIdOpt", "113112", "Retain Institution Identity Option"),
    "retain_uids": ("rtnUIDsOpt", "113110", "Retain UIDs Option"),
    "clean_descriptors": ("cleanDescOpt", "113105", "Clean Descriptors Option"),
    "clean_graphics": ("cleanGraphOpt", "113103", "Clean Graphics Option"),
    "clean_structured_content": ("cleanStructContOpt", "113104", "Clean Structured Content Option"),
}
# Attributes the table does not list that carry the same content as a row it does: an
# overlay's description and label are text about the overlay, so they go with its data.
SUPPLEMENT = {
    "(60XX,0022)": ("Overlay Description", "(60XX,3000)"),
    "(60XX,1500)": ("Overlay Label", "(60XX,3000)"),
}
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")

_CHOICE = {"X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/D": "D", "X/Z/U*": "U*"}


@dataclass(frozen=True)
class _Row:
    name: str
    basic: str
    options: dict[str, str]


class ProfileError(ValueError):
    """An option name that the profile does not know, or options that exclude each other."""


class Profile:
    """The action for each tag under the Basic Profile plus a set of options."""

    def __init__(self, options: frozenset[str] | set[str] | tuple[str, ...] = ()) -> None:
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ProfileError(f"unknown de-identification option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
        if {"retain_longitudinal_modified_dates", "retain_longitudinal_full_dates"} <= set(options):
            raise ProfileError("the modified-dates and full-dates options exclude each other: pick one")
        self.options = frozenset(options)
        self._columns = [OPTIONS[o][0] for o in sorted(self.options)]
        exact, masks = _table()
        self._exact = {tag: self._resolve(row) for tag, row in exact.items()}
        self._masks = [(mask, value, self._resolve(row)) for mask, value, row in masks]

    def _resolve(self, row: _Row) -> str:
        for column in self._columns:
            if column in row.options:
                return row.options[column]
        return _CHOICE.get(row.basic, row.basic)

    def action(self, tag: BaseTag | int) -> str | None:
        """``X``, ``Z``, ``D``, ``U``, ``U*``, ``K`` or ``C`` for a listed tag, else ``None``."""
        found = self._exact.get(int(tag))
        if found is not None:
            return found
        for mask, value, act in self._masks:
            if int(tag) & mask == value:
                return act
        return None

    def action_of_row(self, tag: str) -> str:
        """The action for a row of the table, by its tag as the table writes it."""
        return self._resolve(dict(_rows())[tag])

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes for De-identification Method Code Sequence."""
        return [BASIC_CODE] + [(OPTIONS[o][1], OPTIONS[o][2]) for o in sorted(self.options)]


def table_rows() -> list[tuple[str, str]]:
    """(tag as the table writes it, attribute name) of every row the profile applies."""
    return [(tag, row.name) for tag, row in _rows()]


@lru_cache(maxsize=1)
def _rows() -> list[tuple[str, _Row]]:
    rows = json.loads(files("gateway").joinpath("data/ps3.15-table-e.1-1.json").read_text())
    by_tag = {item["tag"]: item for item in rows}
    rows += [{**by_tag[like], "tag": tag, "name": name} for tag, (name, like) in SUPPLEMENT.items()]
    return [
        (item["tag"], _Row(name=item["name"], basic=item["basicProfile"],
                           options={k: v for k, v in item.items() if k.endswith("Opt")}))
        for item in rows
        if "WHERE GGGG IS ODD" not in item["tag"].upper()  # private: removed by the walker unless a rule keeps them
    ]


@lru_cache(maxsize=1)
def _table() -> tuple[dict[int, _Row], list[tuple[int, int, _Row]]]:
    exact: dict[int, _Row] = {}
    masks: list[tuple[int, int, _Row]] = []
    for tag, row in _rows():
        hexdigits = re.sub(r"[(),]", "", tag).upper()
        if "X" in hexdigits:
            mask = int("".join("0" if c == "X" else "F" for c in hexdigits), 16)
            value = int(hexdigits.replace("X", "0"), 16)
            masks.append((mask, value, row))
        else:
            exact[int(hexdigits, 16)] = row
    return exact, masks
