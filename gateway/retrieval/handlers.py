"""The Query/Retrieve event handlers the listener binds: C-FIND, C-MOVE, C-GET.

Each handler works out who is asking (policy by AE title, address and certificate),
hands the work to the pure parts (``identifier``, ``answers``, ``planner``,
``sending``) and writes one audit line per request. A C-MOVE destination receives what
both the caller and the destination's owners may see, never more: originals only when
both are ``restore``; otherwise the protected objects. A request that names its objects
wrongly, or too many studies, is refused with a failure status and an ErrorComment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context

from gateway import status_codes as dimse
from gateway.audit import AuditLog
from gateway.config import Config, Workstation
from gateway.index import Index
from gateway.keyring import Keyring
from gateway.metrics import Metrics
from gateway.netutil import no_delay
from gateway.pacs_reader import PacsReader
from gateway.retrieval import answers
from gateway.retrieval.identifier import IdentifierError, selection
from gateway.retrieval.planner import Planned, TooManyStudies, plan
from gateway.retrieval.sending import Accepted, Prepared, Refused
from gateway.retrieval.vocabulary import LEVEL_NAMES, Policy
from gateway.retrieval.workers import Workers
from gateway.tls import destination_tls_args, peer_common_name
from gateway.transcode import FALLBACKS

log = logging.getLogger("gateway.qr")

_PATIENT_ROOT = {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"}  # Patient Root MOVE, GET


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
        self.workers = Workers(config.orthanc, reader)

    def close(self) -> None:
        """End the retrieval worker processes (the service's stop)."""
        self.workers.close()

    def caller(self, event: Event) -> tuple[str, str, Workstation | None]:
        ae = event.assoc.requestor.ae_title.strip()
        address = event.assoc.requestor.address
        return ae, address, self.config.retrieval.workstation(ae, address, peer_common_name(event.assoc))

    # -- C-FIND -----------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        ae, address, ws = self.caller(event)
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", "")).upper()
        if ws is None or ws.policy is Policy.DENY or level not in LEVEL_NAMES:
            self.audit.record(ae, address, "C-FIND", "refused", level=level, policy=ws and ws.policy)
            yield dimse.UNABLE_TO_PROCESS, None
            return
        self.workers.warm()  # a workstation that queries retrieves next
        if ws.policy is Policy.RESTORE:
            found = self._find_restore(query, level)
        else:
            found = self._find_pseudonymized(query, level)
        sent = 0
        studies: set[str] = set()
        for study_uid, answer in found:
            if event.is_cancelled:
                self.audit.record(ae, address, "C-FIND", "cancelled", level=level, matches=sent)
                yield dimse.CANCEL, None
                return
            studies.add(study_uid)
            sent += 1
            yield dimse.PENDING, answer
        self.audit.record(ae, address, "C-FIND", "success", level=level, policy=ws.policy, matches=sent,
                          studies=sorted(studies))

    def _find_restore(self, query: Dataset, level: str) -> Iterator[tuple[str, Dataset]]:
        for study_uid, merged in answers.grouped(self.index.entries(self.keyring), level):
            if answers.matches_all(query, merged):
                yield study_uid, answers.answer(query, merged, level, self.config.listener.ae_title)

    def _find_pseudonymized(self, query: Dataset, level: str) -> Iterator[tuple[str, Dataset]]:
        conditions = {e.keyword: str(e.value) for e in query if e.keyword and e.keyword != "QueryRetrieveLevel"
                      and e.VR != "SQ" and e.value not in (None, "", "*")}
        for item in self.reader.find(level, conditions):
            values = {**item.get("PatientMainDicomTags", {}), **item.get("MainDicomTags", {})}
            study_uid = values.get("StudyInstanceUID", item.get("ParentStudy", ""))
            yield study_uid, answers.answer(query, values, level, self.config.listener.ae_title)

    # -- C-MOVE and C-GET -------------------------------------------------------------------

    def on_move(self, event: Event) -> Iterator[Any]:
        ae, address, ws = self.caller(event)
        name = str(event.move_destination).strip()
        destination = self.config.retrieval.destination(name)
        if ws is None or ws.policy is Policy.DENY or destination is None:
            self.audit.record(ae, address, "C-MOVE", "refused", policy=ws and ws.policy, destination=name,
                              reason="unknown destination" if ws else "unknown workstation")
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        policy = Policy.least(ws.policy, self.config.retrieval.destination_policy(destination))
        planned, refusal = self._plan(event, ws, policy)
        sub_association: list[Any] = []  # the association pynetdicom opens to the destination
        handlers: list[tuple[Any, Callable[[Event], None]]] = [
            (evt.EVT_CONN_OPEN, no_delay), (evt.EVT_ACCEPTED, lambda e: sub_association.append(e.assoc))]
        if refusal is None and planned:
            handlers.append((evt.EVT_CONN_OPEN, _announcer(event, len(planned))))
        options: dict[str, Any] = {"evt_handlers": handlers, "tls_args": destination_tls_args(destination)}
        contexts = _contexts(planned, policy)
        if contexts:
            options["contexts"] = contexts
        # fetching and restoring start now, while pynetdicom associates with the destination
        objects = Prepared(planned, policy, self.workers, self.keyring)
        try:
            yield destination.host, destination.port, options
        except GeneratorExit:  # pynetdicom drops the handler when the destination cannot be reached
            objects.cancel()
            self.audit.record(ae, address, "C-MOVE", "failed", destination=name,
                              reason="the destination refused the association or is unreachable")
            raise
        if refusal is not None:
            yield from self._refuse(refusal, ae, address, "C-MOVE", name)
            return
        if policy is not ws.policy:
            log.info("C-MOVE to %s sends protected objects: the destination's owners may not see originals", name)
        yield from self._send(event, planned, objects, policy, ae, address, "C-MOVE", name,
                              lambda: sub_association[0].accepted_contexts if sub_association else [])

    def on_get(self, event: Event) -> Iterator[Any]:
        ae, address, ws = self.caller(event)
        if ws is None or ws.policy is Policy.DENY:
            self.audit.record(ae, address, "C-GET", "refused", policy=ws and ws.policy, reason="unknown workstation")
            yield 1
            yield _status(dimse.UNABLE_TO_PROCESS, "this AE title may not retrieve"), None
            return
        planned, refusal = self._plan(event, ws, ws.policy)
        if refusal is not None:
            yield from self._refuse(refusal, ae, address, "C-GET", ae)
            return
        objects = Prepared(planned, ws.policy, self.workers, self.keyring)
        yield from self._send(event, planned, objects, ws.policy, ae, address, "C-GET", ae,
                              lambda: event.assoc.accepted_contexts)  # C-GET stores on the caller's association

    def _plan(self, event: Event, ws: Workstation, policy: Policy) -> tuple[list[Planned], Dataset | None]:
        """The plan, or the failure status that refuses the request."""
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            chosen = selection(event.identifier, patient_root=sop_class in _PATIENT_ROOT)
            return plan(self.index.entries(self.keyring), chosen, policy, ws.max_studies_per_retrieve), None
        except IdentifierError as exc:
            return [], _status(dimse.DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except TooManyStudies as exc:
            return [], _status(dimse.UNABLE_TO_PROCESS, str(exc))

    def _refuse(self, status: Dataset, ae: str, address: str, action: str, to: str) -> Iterator[Any]:
        self.audit.record(ae, address, action, "refused", to=to, status=f"0x{status.Status:04X}",
                          reason=str(status.ErrorComment))
        yield 1  # pynetdicom needs a count before the final status; nothing is sent
        yield status, None

    def _send(self, event: Event, planned: list[Planned], objects: Prepared, policy: Policy, ae: str, address: str,
              action: str, to: str, contexts: Callable[[], list[PresentationContext]]) -> Iterator[Any]:
        try:
            yield len(planned)  # pynetdicom has associated with the receiver when it asks for more
            yield from self._sub_operations(event, planned, objects.datasets(_accepted(contexts())), policy, ae,
                                            address, action, to)
        finally:
            objects.cancel()

    def _sub_operations(self, event: Event, planned: list[Planned], datasets: Iterator[Dataset | Refused],
                        policy: Policy, ae: str, address: str, action: str, to: str) -> Iterator[Any]:
        failed = completed = transcoded = 0
        for item, ds in zip(planned, datasets, strict=True):
            if event.is_cancelled:
                self.audit.record(ae, address, action, "cancelled", to=to, completed=completed, failed=failed)
                yield dimse.CANCEL, None
                return
            if isinstance(ds, Refused):
                failed += 1
                log.error("%s of %s to %s: not sent: %s", action, item.entry.sop_uid, to, ds)
                self.metrics.retrieved.labels(policy=policy, outcome="refused").inc()
                yield dimse.PENDING, ds  # pynetdicom counts a pending non-dataset as a failed sub-operation
                continue
            if policy is Policy.RESTORE and str(ds.file_meta.TransferSyntaxUID) != item.entry.transfer_syntax:
                transcoded += 1
                log.info("%s of %s to %s: decoded to %s, the receiver takes no %s", action, item.entry.sop_uid, to,
                         ds.file_meta.TransferSyntaxUID.name, item.entry.transfer_syntax)
            completed += 1
            self.metrics.retrieved.labels(policy=policy, outcome="sent").inc()
            yield dimse.PENDING, ds
        self.audit.record(ae, address, action, "success" if not failed else "partial", to=to, policy=policy,
                          completed=completed, failed=failed, transcoded=transcoded,
                          studies=sorted({p.entry.study_uid for p in planned}))


def _announcer(event: Event, remaining: int) -> Callable[[Event], None]:
    """An EVT_CONN_OPEN handler for the association to the C-MOVE destination: a Pending
    response (nothing completed, ``remaining`` to go) on the caller's association as soon as
    the connection is open. dcmtk's C-MOVE SCU (``movescu``, and workstations built on its
    ``DIMSE_moveUser``) looks for the incoming association only between one-second waits for
    a response on its own: without a response to wake it, the destination accepts the
    sub-association up to a second late. pynetdicom's own Pending responses come only after
    each sub-operation."""
    caller, context_id, request = event.assoc, event.context.context_id, event.request

    def announce(_: Event) -> None:
        if not caller.is_established:
            return
        rsp = C_MOVE()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.Status = dimse.PENDING
        rsp.NumberOfRemainingSuboperations = remaining
        rsp.NumberOfCompletedSuboperations = rsp.NumberOfFailedSuboperations = 0
        rsp.NumberOfWarningSuboperations = 0
        caller.dimse.send_msg(rsp, context_id)  # queued for the caller's own DUL thread

    return announce


def _contexts(planned: list[Planned], policy: Policy) -> list[PresentationContext]:
    """One context per SOP class and transfer syntax the objects may travel in: a restored
    original in its own syntax; a protected copy in the original's (a ``none`` route keeps
    compressed pixels as they came) or JPEG 2000 lossless (``protected_syntax: lossless``);
    and for both explicit and implicit VR little endian, which the gateway decodes to for a
    workstation that takes nothing else. pynetdicom proposes at most 128."""
    wanted: set[tuple[str, str]] = set()
    for p in planned:
        if not p.entry.sop_class:
            continue
        syntaxes = [p.entry.transfer_syntax or ExplicitVRLittleEndian, *FALLBACKS]
        if policy is not Policy.RESTORE:
            syntaxes.append(JPEG2000Lossless)
        wanted.update((p.entry.sop_class, ts) for ts in syntaxes)
    return [build_context(sop, ts) for sop, ts in sorted(wanted)][:128]


def _accepted(contexts: list[PresentationContext]) -> Accepted:
    """The transfer syntaxes accepted for each SOP class, from an association's contexts."""
    out: dict[str, set[str]] = {}
    for cx in contexts:
        out.setdefault(str(cx.abstract_syntax), set()).update(str(ts) for ts in cx.transfer_syntax)
    return {sop: frozenset(ts) for sop, ts in out.items()}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO
    return status
