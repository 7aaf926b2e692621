"""Storage Commitment Push Model SCP (PS3.4 Annex J): a modality asks whether the gateway has
taken responsibility for a list of instances before it deletes its own copies.

The N-ACTION is answered at once; the result follows as an N-EVENT-REPORT once every
referenced instance is settled: durable in the spool (the route's ``commitment: intake``,
the default) or stored in Orthanc (``commitment: orthanc``). An instance the spool never
received fails after ``missing_after_seconds`` (0x0112 no such object instance), one
quarantined or refused by Orthanc fails (0x0110 processing failure), one whose SOP class
differs from the request's fails (0x0119 class-instance conflict). The report goes over the
request's association while the modality keeps it open, else over a new association to the
sender's ``host`` and ``storage_commitment_port``.

Pending requests are kept as files in the spool (they name original UIDs, like the
originals beside them), so a restart resumes them; a request is forgotten once its report
was delivered. Logs name the transaction by its UID and the instances by count only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]  # pynetdicom builds its SOP class names at import time

from gateway import status_codes as dimse
from gateway.config import Config, Route, Sender
from gateway.delivery import header_and_origin
from gateway.pseudonym import Pseudonymizer
from gateway.spool import SPOOL_STATES, Incoming, Spool, write_durably
from gateway.tls import peer_common_name

log = logging.getLogger("gateway.commitment")

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
_IN_SPOOL = set(SPOOL_STATES) - {"purged"}  # durable: every state until an original is purged
_IN_ORTHANC = {"forwarded", "done"}
_NEVER_IN_ORTHANC = {"quarantined", "failed"}
_RETRY_SECONDS = 10.0  # between attempts to deliver a result the modality did not take


@dataclass
class Request:
    """One N-ACTION's transaction: the referenced (SOP class, SOP instance) pairs."""

    transaction_uid: str
    calling_ae: str
    address: str
    references: list[tuple[str, str]]
    received_at: float = field(default_factory=time.time)
    assoc: Association | None = None  # the request's association while it is open
    retry_at: float = 0.0  # after a failed delivery, when to try the modality again


def outcome(request: Request, rows: dict[str, tuple[str, Incoming]], tokens: list[str], config: Config,
            now: float, route_of: Callable[[Incoming], Route | None]) -> tuple[list[tuple[str, str]],
                                                                              list[tuple[str, str, int]]] | None:
    """(committed, failed with reason) once every reference is settled; None while any still waits.

    ``rows``: the spool's newest row per SOP token (state, row); ``tokens``: each reference's
    token, in order; ``route_of``: the route a row takes.
    """
    settings = config.storage_commitment
    waited = now - request.received_at
    committed: list[tuple[str, str]] = []
    failed: list[tuple[str, str, int]] = []
    for (sop_class, sop_uid), token in zip(request.references, tokens, strict=True):
        row = rows.get(token)
        if row is None:
            if waited < settings.missing_after_seconds:
                return None
            failed.append((sop_class, sop_uid, dimse.NO_SUCH_INSTANCE))
            continue
        state, item = row
        if item.sop_class_uid != sop_class:
            failed.append((sop_class, sop_uid, dimse.CLASS_INSTANCE_CONFLICT))
            continue
        route = route_of(item)
        wanted = _IN_ORTHANC if route is not None and route.commitment == "orthanc" else _IN_SPOOL
        if state in wanted:
            committed.append((sop_class, sop_uid))
        elif state in _NEVER_IN_ORTHANC or route is None:
            failed.append((sop_class, sop_uid, dimse.PROCESSING_FAILURE))
        elif waited < settings.timeout_seconds:
            return None
        else:
            failed.append((sop_class, sop_uid, dimse.PROCESSING_FAILURE))
    return committed, failed


def event_information(transaction_uid: str, committed: list[tuple[str, str]],
                      failed: list[tuple[str, str, int]]) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's event type (1: all committed, 2: some failed) and information."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if committed:
        info.ReferencedSOPSequence = [_item(c, i) for c, i in committed]
    if failed:
        info.FailedSOPSequence = [_item(c, i, reason) for c, i, reason in failed]
    return (2 if failed else 1), info


def _item(sop_class: str, sop_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if reason is not None:
        item.FailureReason = reason
    return item


class StorageCommitment:
    """The N-ACTION handler and the thread that answers with N-EVENT-REPORTs."""

    def __init__(self, config: Config, spool: Spool, pseudonyms: Pseudonymizer) -> None:
        self.config = config
        self.spool = spool
        self.pseudonyms = pseudonyms
        # On a shared spool folder each node keeps, and after a restart answers, its own requests.
        self.folder = spool.root / "commitment" if spool.state.single_node else spool.root / "commitment" / spool.node
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-commitment", daemon=True)
        for path in sorted(self.folder.glob("*.json")):  # requests a restart interrupted
            saved = json.loads(path.read_text())
            request = Request(saved["transaction_uid"], saved["calling_ae"], saved["address"],
                              [tuple(r) for r in saved["references"]], saved["received_at"])
            self._pending[request.transaction_uid] = request

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    # -- N-ACTION ---------------------------------------------------------------------------

    def on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        address = assoc.requestor.address
        if self._sender(calling, address, peer_common_name(assoc)) is None:
            log.warning("storage commitment from %s refused: not a configured sender", calling)
            return dimse.NOT_AUTHORIZED, None
        if getattr(event.request, "ActionTypeID", None) != 1:  # 1: Request Storage Commitment
            return dimse.NO_SUCH_ACTION, None
        info = event.action_information
        try:
            references = [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                          for item in info.ReferencedSOPSequence]
            transaction = str(info.TransactionUID)
        except (AttributeError, TypeError):
            log.warning("storage commitment from %s refused: no Transaction UID or Referenced SOP Sequence", calling)
            return dimse.MISSING_ATTRIBUTE, None
        if not references or not transaction or not all(c and i for c, i in references):
            log.warning("storage commitment from %s refused: empty Transaction UID or references", calling)
            return dimse.MISSING_ATTRIBUTE, None
        request = Request(transaction, calling, address, references, assoc=assoc)
        self._save(request)
        with self._lock:
            self._pending[transaction] = request
        log.info("storage commitment %s from %s: %d instance(s) requested", _token(transaction), calling,
                 len(references))
        return dimse.SUCCESS, None

    def _sender(self, calling: str, address: str, subject: str | None) -> Sender | None:
        return next((s for s in self.config.senders if s.matches(calling, address, subject)), None)

    def _save(self, request: Request) -> None:
        write_durably(self.folder / f"{request.transaction_uid}.json", json.dumps({
            "transaction_uid": request.transaction_uid, "calling_ae": request.calling_ae, "address": request.address,
            "references": request.references, "received_at": request.received_at}).encode())

    # -- results ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.config.storage_commitment.poll_seconds):
            try:
                self.check()
            except Exception:  # the thread must live on; pending requests stay on disk
                log.exception("storage commitment check failed; trying again")

    def check(self) -> None:
        """Report every pending request that is settled now."""
        with self._lock:
            pending = list(self._pending.values())
        for request in pending:
            if time.time() < request.retry_at:
                continue
            tokens = [self.pseudonyms.uid(uid) for _, uid in request.references]
            result = outcome(request, self.spool.latest(tokens), tokens, self.config, time.time(), self._route_of)
            if result is None:
                continue
            if self._report(request, *event_information(request.transaction_uid, *result)):
                with self._lock:
                    self._pending.pop(request.transaction_uid, None)
                (self.folder / f"{request.transaction_uid}.json").unlink(missing_ok=True)
                log.info("storage commitment %s: %d committed, %d failed, reported to %s",
                         _token(request.transaction_uid),
                         len(result[0]), len(result[1]), request.calling_ae)
            else:
                request.retry_at = time.time() + _RETRY_SECONDS

    def _route_of(self, item: Incoming) -> Route | None:
        """The route the object takes: by its header while the spool still has the file."""
        try:
            header, called, address = header_and_origin(item, self.config)
        except Exception:  # noqa: BLE001 - purged, moved or unreadable: the header-free rules decide
            header, called, address = None, "", ""
        return self.config.route_for(item.calling_ae, item.modality, item.sop_class_uid, called, address, header)

    def _report(self, request: Request, event_type: int, info: Dataset) -> bool:
        """Send the N-EVENT-REPORT; True once the modality answered it."""
        if request.assoc is not None and request.assoc.is_established:
            status, _ = request.assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                          WELL_KNOWN_INSTANCE)
            if "Status" in status:  # an empty status: no answer (DIMSE timeout or abort)
                return True
        sender = next((s for s in self.config.senders if s.ae_title == request.calling_ae
                       and s.storage_commitment_port is not None), None)
        if sender is None or sender.host is None or sender.storage_commitment_port is None:
            if time.time() - request.received_at > self.config.storage_commitment.timeout_seconds:
                log.error("storage commitment %s: %s closed the association and has no storage_commitment_port;"
                          " result dropped", _token(request.transaction_uid), request.calling_ae)
                return True
            return False
        return self._report_on_new_association(sender, sender.host, sender.storage_commitment_port, event_type, info,
                                               request)

    def _report_on_new_association(self, sender: Sender, host: str, port: int, event_type: int, info: Dataset,
                                   request: Request) -> bool:
        ae = AE(ae_title=self.config.listener.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        # The gateway requests the association but acts as the Storage Commitment SCP.
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(host, port, ae_title=sender.ae_title, ext_neg=[role])
        if not assoc.is_established:
            log.warning("storage commitment %s: %s at %s:%d did not accept an association; retrying",
                        _token(request.transaction_uid), sender.ae_title, host, port)
            return False
        try:
            status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
            return "Status" in status
        finally:
            assoc.release()


def _token(transaction_uid: str) -> str:
    """A transaction named in the log without its UID: the modality's UIDs may carry its own
    identifiers (root, serial number), and the log check allows no original UID."""
    return "txn-" + hashlib.sha256(transaction_uid.encode()).hexdigest()[:12]
