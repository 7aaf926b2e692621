"""C-FIND matching and answers: pure functions over attribute dictionaries.

Attribute values are DICOM strings (multiple values joined by backslashes); matching
follows PS3.4 C.2.2.2 through ``gateway.attribute_matching``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from gateway.attribute_matching import matches
from gateway.index import Entry
from gateway.retrieval.vocabulary import keys_below, level


def matches_all(query: Dataset, values: dict[str, str]) -> bool:
    """Every non-empty key of ``query`` matches ``values``; keys ``values`` lacks do not
    restrict (PS3.4 C.2.2.1.2 leaves that to the SCP)."""
    for elem in query:
        keyword = elem.keyword
        if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", "") or elem.VR == "SQ":
            continue
        wanted = "" if elem.value is None else "\\".join(map(str, elem.value)) if elem.VM > 1 else str(elem.value)
        if wanted in ("", "*"):
            continue
        value = values.get(keyword)
        if value is None:
            continue
        if not any(matches(wanted, v, elem.VR) for v in value.split("\\") or [""]):
            return False
    return True


def grouped(entries: Iterable[Entry], level_name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """One merged attribute set per answer at ``level_name`` (its unique key groups the
    entries), with the study's pseudonymous UID for the audit; the counts and modalities
    a PATIENT or STUDY answer carries are computed over the group."""
    key = level(level_name).unique_key  # type: ignore[union-attr]  # callers pass a checked level
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[e.original.get(key, "")].append(e)
    for group in groups.values():
        merged = dict(group[0].original)
        if level_name in ("PATIENT", "STUDY"):
            merged["ModalitiesInStudy"] = "\\".join(sorted({e.original.get("Modality", "") for e in group} - {""}))
            merged[f"NumberOf{level_name.title()}RelatedInstances"] = str(len(group))
        yield group[0].study_uid, merged


def answer(query: Dataset, values: dict[str, str], level_name: str, retrieve_ae: str) -> Dataset:
    """The query's keys, filled with ``values``; keys of levels below ``level_name`` are left out."""
    out = Dataset()
    below = keys_below(level_name)
    for elem in query:
        if elem.keyword in below:
            continue
        value = values.get(elem.keyword)
        if elem.keyword == "QueryRetrieveLevel":
            out.QueryRetrieveLevel = level_name
        elif elem.keyword == "SpecificCharacterSet":
            out.SpecificCharacterSet = "ISO_IR 192"
        elif elem.keyword and elem.VR != "SQ":
            filled = value.split("\\") if value and "\\" in value else (value or "")
            out.add_new(elem.tag, dictionary_VR(elem.tag), filled)
    out.RetrieveAETitle = retrieve_ae
    return out
