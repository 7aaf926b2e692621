"""The DICOM vocabulary of retrieval: policies, Q/R levels, statuses (one place each)."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Policy(StrEnum):
    """What a workstation (or a C-MOVE destination, through its owners) may receive."""

    RESTORE = "restore"  # the original objects, restored and verified
    PSEUDONYMIZED = "pseudonymized"  # the protected objects as Orthanc holds them
    DENY = "deny"

    @staticmethod
    def least(*policies: Policy) -> Policy:
        """The most restrictive of ``policies``: a move never gives a destination more than its
        caller may see, nor more than the destination's own owners may."""
        order = (Policy.DENY, Policy.PSEUDONYMIZED, Policy.RESTORE)
        return min(policies, key=order.index)


class Level(NamedTuple):
    """One Query/Retrieve level: its name, its unique key and the keys a query may ask for."""

    name: str
    unique_key: str
    keys: tuple[str, ...]


LEVELS: tuple[Level, ...] = (
    Level("PATIENT", "PatientID", ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID")),
    Level("STUDY", "StudyInstanceUID", ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                                        "StudyDescription", "ReferringPhysicianName")),
    Level("SERIES", "SeriesInstanceUID", ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                                          "SeriesDate", "BodyPartExamined")),
    Level("IMAGE", "SOPInstanceUID", ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")),
)
LEVEL_NAMES = tuple(level.name for level in LEVELS)
QUERY_KEYS = tuple(k for level in LEVELS for k in level.keys)


def level(name: str) -> Level | None:
    return next((lv for lv in LEVELS if lv.name == name), None)


def keys_below(name: str) -> set[str]:
    """The query keys of the levels under ``name`` (left out of its answers)."""
    below = LEVEL_NAMES[LEVEL_NAMES.index(name) + 1:]
    return {k for lv in LEVELS if lv.name in below for k in lv.keys}


__all__ = ["LEVELS", "LEVEL_NAMES", "QUERY_KEYS", "Level", "Policy", "keys_below", "level"]
