"""The Query/Retrieve SCP: C-FIND, C-MOVE and C-GET for radiologists' workstations.

Each calling AE title has a policy (admin config ``retrieval.workstations``):
- ``restore``: queries match original values (from the encrypted index) and answer with
  them; retrieval fetches the protected objects from Orthanc, restores them and sends
  the originals, each verified against the original's SHA-256 from its envelope;
- ``pseudonymized``: queries and retrievals see what Orthanc holds, unchanged;
- ``deny`` or unknown: refused at association (see the listener), and audited.

An object that fails to restore is never sent: its sub-operation counts as failed and the
final status says so. Every request ends in one audit line.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context

from gateway import envelope
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.index import LEVEL_KEYS, Entry, Index
from gateway.keyring import Keyring
from gateway.matching import matches
from gateway.metrics import Metrics
from gateway.netutil import keep_responses, no_delay
from gateway.pacs_reader import PacsReader
from gateway.restore import restore_series
from gateway.stages import is_series_level
from gateway.tls import destination_tls_args, peer_common_name

log = logging.getLogger("gateway.qr")

PENDING = 0xFF00
CANCELLED = 0xFE00
SUCCESS = 0x0000
UNABLE_TO_PROCESS = 0xC000
UNKNOWN_DESTINATION = 0xA801
# Keys that group entries into one answer at each level.
_LEVEL_ID = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
             "IMAGE": "SOPInstanceUID"}
_LEVEL_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# Restored objects in flight at once, per request (bounds memory on big series).
_BATCH = 32
# Batches being fetched and restored ahead of the one being sent.
_PREFETCH = 2


class QueryRetrieve:
    """Handlers for the listener's Q/R events."""

    def __init__(self, config: Config, keyring: Keyring, index: Index, reader: PacsReader, audit: AuditLog,
                 metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.keyring = keyring
        self.index = index
        self.reader = reader
        self.audit = audit

    def policy(self, event: Event) -> tuple[str, str, str | None]:
        ae = event.assoc.requestor.ae_title.strip()
        address = event.assoc.requestor.address
        return ae, address, self.config.retrieval.policy(ae, address, peer_common_name(event.assoc))

    # -- C-FIND -----------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        ae, address, policy = self.policy(event)
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", "")).upper()
        if policy not in ("restore", "pseudonymized") or level not in _LEVEL_ORDER:
            self.audit.record(ae, address, "C-FIND", "refused", level=level, policy=policy)
            yield UNABLE_TO_PROCESS, None
            return
        answers = self._find_restore(query, level) if policy == "restore" else self._find_pseudonymized(query, level)
        sent = 0
        studies: set[str] = set()
        for study_uid, answer in answers:
            if event.is_cancelled:
                self.audit.record(ae, address, "C-FIND", "cancelled", level=level, matches=sent)
                yield CANCELLED, None
                return
            studies.add(study_uid)
            sent += 1
            yield PENDING, answer
        self.audit.record(ae, address, "C-FIND", "success", level=level, policy=policy, matches=sent,
                          studies=sorted(studies))

    def _find_restore(self, query: Dataset, level: str) -> Iterator[tuple[str, Dataset]]:
        for group in self._groups(list(self.index.entries(self.keyring)), level).values():
            merged = dict(group[0].original)
            if level in ("PATIENT", "STUDY"):
                merged["ModalitiesInStudy"] = "\\".join(sorted({e.original.get("Modality", "") for e in group} - {""}))
                merged[f"NumberOf{level.title()}RelatedInstances"] = str(len(group))
            if _matches_all(query, merged):
                yield group[0].study_uid, _answer(query, merged, level, self.config.listener.ae_title)

    def _find_pseudonymized(self, query: Dataset, level: str) -> Iterator[tuple[str, Dataset]]:
        conditions = {e.keyword: str(e.value) for e in query if e.keyword and e.keyword != "QueryRetrieveLevel"
                      and e.VR != "SQ" and e.value not in (None, "", "*")}
        for item in self.reader.find(level, conditions):
            values = {**item.get("PatientMainDicomTags", {}), **item.get("MainDicomTags", {})}
            study_uid = values.get("StudyInstanceUID", item.get("ParentStudy", ""))
            yield study_uid, _answer(query, values, level, self.config.listener.ae_title)

    @staticmethod
    def _groups(entries: list[Entry], level: str) -> dict[str, list[Entry]]:
        key = _LEVEL_ID[level]
        groups: dict[str, list[Entry]] = defaultdict(list)
        for e in entries:
            groups[e.original.get(key, "")].append(e)
        return groups

    # -- C-MOVE and C-GET -------------------------------------------------------------------

    def on_move(self, event: Event) -> Iterator[Any]:
        ae, address, policy = self.policy(event)
        destination = self.config.retrieval.destination(str(event.move_destination).strip())
        if policy not in ("restore", "pseudonymized") or destination is None:
            self.audit.record(ae, address, "C-MOVE", "refused", policy=policy,
                              destination=str(event.move_destination).strip())
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        plan = self._plan(event.identifier, policy)
        contexts = [build_context(sop, ts or ExplicitVRLittleEndian) for sop, ts in sorted({(p[2], p[3]) for p in plan if p[2]})]
        options: dict[str, Any] = {"evt_handlers": [(evt.EVT_CONN_OPEN, no_delay), (evt.EVT_CONN_OPEN, keep_responses)],
                                   "tls_args": destination_tls_args(destination)}
        if contexts:
            options["contexts"] = contexts[:128]
        yield destination.host, destination.port, options
        yield from self._send(event, plan, policy, ae, address, "C-MOVE", destination.ae_title)

    def on_get(self, event: Event) -> Iterator[Any]:
        ae, address, policy = self.policy(event)
        if policy not in ("restore", "pseudonymized"):
            self.audit.record(ae, address, "C-GET", "refused", policy=policy)
            yield 0
            return
        yield from self._send(event, self._plan(event.identifier, policy), policy, ae, address, "C-GET", ae)

    def _plan(self, query: Dataset, policy: str) -> list[tuple[str, str, str, str]]:
        """What to send: (Orthanc instance id, pseudonymous series UID, SOP class, transfer syntax)."""
        level = str(query.get("QueryRetrieveLevel", "")).upper()
        if level not in _LEVEL_ORDER:
            return []
        if policy == "pseudonymized":
            keys = {k: str(query.get(k)) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                    if query.get(k)}
            return [(i, "", "", "") for i in self.reader.instances(level, keys)]
        wanted = [e for e in self.index.entries(self.keyring) if _matches_all(query, e.original, uid_keys_only=True)]
        by_study: dict[str, list[Entry]] = defaultdict(list)
        for e in wanted:
            by_study[e.study_uid].append(e)
        plan = []
        for study_uid, entries in by_study.items():
            ids = self.reader.study_instances(study_uid)
            for e in sorted(entries, key=lambda e: (e.series_uid, int(e.original.get("InstanceNumber", 0) or 0))):
                if e.sop_uid in ids:
                    plan.append((ids[e.sop_uid], e.series_uid, e.original.get("SOPClassUID", ""),
                                 e.original.get("_TransferSyntaxUID", "")))
        return plan

    def _send(self, event: Event, plan: list[tuple[str, str, str, str]], policy: str, ae: str, address: str,
              action: str, to: str) -> Iterator[Any]:
        yield len(plan)
        failed = completed = 0
        batches = _batches(plan, self._whole_series(plan) if policy == "restore" else set())
        # The next batches are fetched and restored while this one is being sent. Two workers:
        # a REST download waits on Orthanc (another process, another core) and hashing and
        # zlib release the GIL, so two overlap where one would leave the sender waiting.
        with ThreadPoolExecutor(max_workers=_PREFETCH) as pool:
            ahead = [pool.submit(self._datasets, b, policy) for b in batches[:_PREFETCH]]
            for number in range(len(batches)):
                ready = ahead.pop(0).result()
                if number + _PREFETCH < len(batches):
                    ahead.append(pool.submit(self._datasets, batches[number + _PREFETCH], policy))
                for ds in ready:
                    if event.is_cancelled:
                        self.audit.record(ae, address, action, "cancelled", to=to, completed=completed, failed=failed)
                        yield CANCELLED, None
                        return
                    if isinstance(ds, str):  # could not be restored exactly: never sent
                        failed += 1
                        self.metrics.retrieved.labels(policy=policy, outcome="refused").inc()
                        yield PENDING, ds  # pynetdicom counts a non-dataset as a failed sub-operation
                        continue
                    completed += 1
                    self.metrics.retrieved.labels(policy=policy, outcome="sent").inc()
                    yield PENDING, ds
        self.audit.record(ae, address, action, "success" if not failed else "partial", to=to, policy=policy,
                          completed=completed, failed=failed, studies=sorted({p[1] for p in plan}))

    def _whole_series(self, plan: list[tuple[str, str, str, str]]) -> set[str]:
        """Series whose transform restores only the whole series at once (coverless): the
        stage names in the clear part of each series' first envelope say so."""
        first: dict[str, str] = {}
        for instance_id, series_uid, _, _ in plan:
            first.setdefault(series_uid, instance_id)
        whole = set()
        for series_uid, instance_id in first.items():
            try:
                head = pydicom.dcmread(io.BytesIO(self.reader.file(instance_id)), stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - its restore will report what is wrong with it
                continue
            if any(is_series_level(name) for name in envelope.stage_names(head)):
                whole.add(series_uid)
        return whole

    def _datasets(self, batch: list[tuple[str, str, str, str]], policy: str) -> list[Dataset | str]:
        """The batch ready to send; a string in place of an object that failed to restore."""
        raws = [self.reader.file(p[0]) for p in batch]
        if policy == "pseudonymized":
            return [pydicom.dcmread(io.BytesIO(r)) for r in raws]
        by_series: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(batch):
            by_series[p[1]].append(i)
        out: list[Dataset | str] = []
        for members in by_series.values():
            for outcome in restore_series([raws[i] for i in members], self.keyring):
                if outcome.data is None:
                    log.error("restore of %s refused for sending: %s", outcome.sop_uid, outcome.error)
                    out.append(f"restore failed: {outcome.error}")
                else:
                    out.append(pydicom.dcmread(io.BytesIO(outcome.data)))
        return out


def _batches(plan: list[tuple[str, str, str, str]], whole: set[str]) -> list[list[tuple[str, str, str, str]]]:
    """About ``_BATCH`` objects each, so the next batch is restored while this one is sent;
    a series in ``whole`` (the plan lists a series' objects together) stays in one batch."""
    batches: list[list[tuple[str, str, str, str]]] = []
    for entry in plan:
        same_whole_series = bool(batches) and entry[1] in whole and entry[1] == batches[-1][-1][1]
        if batches and (same_whole_series or (len(batches[-1]) < _BATCH and batches[-1][-1][1] not in whole)):
            batches[-1].append(entry)
        else:
            batches.append([entry])
    return batches


def _matches_all(query: Dataset, values: dict[str, str], uid_keys_only: bool = False) -> bool:
    for elem in query:
        keyword = elem.keyword
        if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", "") or elem.VR == "SQ":
            continue
        if uid_keys_only and keyword not in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            continue
        wanted = "" if elem.value is None else "\\".join(map(str, elem.value)) if elem.VM > 1 else str(elem.value)
        if wanted in ("", "*"):
            continue
        value = values.get(keyword)
        if value is None:
            continue  # a key the index does not hold does not restrict (PS3.4 C.2.2.1.2 leaves this open)
        if not any(matches(wanted, v, elem.VR) for v in value.split("\\") or [""]):
            return False
    return True


def _answer(query: Dataset, values: dict[str, str], level: str, retrieve_ae: str) -> Dataset:
    """The query's keys, filled with ``values``; keys of levels below ``level`` are left out."""
    out = Dataset()
    below = set().union(*(LEVEL_KEYS[lv] for lv in _LEVEL_ORDER[_LEVEL_ORDER.index(level) + 1 :]))
    for elem in query:
        if elem.keyword in below:
            continue
        value = values.get(elem.keyword)
        if elem.keyword == "QueryRetrieveLevel":
            out.QueryRetrieveLevel = level
        elif elem.keyword == "SpecificCharacterSet":
            out.SpecificCharacterSet = "ISO_IR 192"
        elif elem.keyword and elem.VR != "SQ":
            vr = dictionary_VR(elem.tag)
            out.add_new(elem.tag, vr, value.split("\\") if value and "\\" in value else (value or ""))
    out.RetrieveAETitle = retrieve_ae
    return out
