"""What a C-MOVE or C-GET Identifier may name, checked before anything is planned.

PS3.4 C.4.2.2.1 (hierarchical retrieval): the Identifier carries the unique key of the
retrieve level, a single value or a list of UIDs, and the unique key of every level above
it as a single value (Patient ID above STUDY in the Patient Root model; none above STUDY
in the Study Root model). A missing, empty, wildcard or malformed unique key is refused
with 0xA900 (Identifier does not match SOP Class): an empty key would otherwise match the
whole archive. Other keys are not used to select (matching on them is C-FIND's job), so
they can never widen a retrieval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.retrieval.vocabulary import LEVEL_NAMES

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_WILDCARD = re.compile(r"[*?\\]")


class IdentifierError(Exception):
    """The Identifier does not name what to retrieve the way PS3.4 requires."""


@dataclass(frozen=True)
class Selection:
    """What a retrieval names: at each level, the values it must match (None: any)."""

    level: str
    patient_id: str | None = None
    study_uids: frozenset[str] | None = None
    series_uids: frozenset[str] | None = None
    sop_uids: frozenset[str] | None = None


def selection(identifier: Dataset, patient_root: bool) -> Selection:
    """The checked selection of ``identifier``; raise IdentifierError saying what is wrong."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVEL_NAMES or (level == "PATIENT" and not patient_root):
        allowed = LEVEL_NAMES if patient_root else LEVEL_NAMES[1:]
        raise IdentifierError(f"QueryRetrieveLevel must be {'/'.join(allowed)}")
    depth = LEVEL_NAMES.index(level)
    patient_id = _patient_id(identifier, required=patient_root)
    uids: list[frozenset[str] | None] = []
    for keyword, at in (("StudyInstanceUID", 1), ("SeriesInstanceUID", 2), ("SOPInstanceUID", 3)):
        uids.append(None if depth < at else _uids(identifier, keyword, many=depth == at))
    return Selection(level, patient_id, *uids)


def _patient_id(identifier: Dataset, required: bool) -> str | None:
    value = identifier.get("PatientID")
    text = "" if value is None else str(value).strip()
    if not text:
        if required:
            raise IdentifierError("PatientID (unique key) missing or empty")
        return None
    if _WILDCARD.search(text):
        raise IdentifierError("PatientID must be one value, no wildcards")
    return text


def _uids(identifier: Dataset, keyword: str, many: bool) -> frozenset[str]:
    value = identifier.get(keyword)
    values = [] if value is None else list(value) if isinstance(value, (list, MultiValue)) else [value]
    values = [str(v).strip().rstrip("\0") for v in values]
    if not values or not all(values):
        raise IdentifierError(f"{keyword} (unique key) missing or empty")
    if not many and len(values) > 1:
        raise IdentifierError(f"{keyword} must be one UID above the level")
    bad = [v for v in values if len(v) > 64 or not _UID.match(v)]
    if bad:
        raise IdentifierError(f"{keyword}: not a UID (no wildcards)")
    return frozenset(values)
