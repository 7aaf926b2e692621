"""Which protected objects a C-MOVE or C-GET sends: from the retrieval index alone.

The index knows, for every object Orthanc holds, its pseudonymous and (sealed) original
UIDs, Orthanc's id, SOP class, the original's transfer syntax and the stages that
protected it, so planning downloads nothing. A ``restore`` selection names original
values; a ``pseudonymized`` one names what Orthanc holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from gateway.index import Entry
from gateway.retrieval.identifier import Selection
from gateway.retrieval.vocabulary import Policy
from gateway.stages import is_series_level


class Planned(NamedTuple):
    """One object to send."""

    orthanc_id: str
    entry: Entry

    @property
    def whole_series(self) -> bool:
        """Its transform restores only with the whole series (coverless)."""
        return any(is_series_level(name) for name in self.entry.stages)


class TooManyStudies(Exception):
    """The selection reaches more studies than the workstation may retrieve at once."""


def plan(entries: Iterable[Entry], selection: Selection, policy: Policy, max_studies: int) -> list[Planned]:
    """The objects ``selection`` names, series together, in instance order."""
    wanted = [e for e in entries if _selected(e, selection, policy)]
    studies = {e.study_uid for e in wanted}
    if len(studies) > max_studies:
        raise TooManyStudies(f"{len(studies)} studies; limit {max_studies} per retrieve")
    wanted.sort(key=lambda e: (e.study_uid, e.series_uid, _number(e), e.sop_uid))
    return [Planned(e.orthanc_id, e) for e in wanted]


def _selected(entry: Entry, selection: Selection, policy: Policy) -> bool:
    if policy is Policy.RESTORE:
        o = entry.original
        values = (o.get("PatientID", ""), o.get("StudyInstanceUID", ""), o.get("SeriesInstanceUID", ""),
                  o.get("SOPInstanceUID", ""))
    else:
        values = (entry.patient_id, entry.study_uid, entry.series_uid, entry.sop_uid)
    patient, study, series, sop = values
    return ((selection.patient_id is None or selection.patient_id == patient)
            and (selection.study_uids is None or study in selection.study_uids)
            and (selection.series_uids is None or series in selection.series_uids)
            and (selection.sop_uids is None or sop in selection.sop_uids))


def _number(entry: Entry) -> int:
    try:
        return int(entry.original.get("InstanceNumber", 0) or 0)
    except ValueError:
        return 0
