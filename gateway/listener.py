"""The DICOM listener: C-ECHO and C-STORE from configured modalities.

Associations are accepted only from configured calling AE titles, and from their
address where one is configured; anyone else is rejected at association
(A-ASSOCIATE-RJ, "calling AE title not recognised"). A C-STORE answers Success only
after the whole object was checked for structural integrity (``gateway.integrity``) and
the spool has made it durable; if the spool cannot, or its file system is below the
free-space reserve, the answer is 0xA700 (out of resources) and the modality sends again
later. A problem with one object (damaged, an unknown or mismatched SOP class) answers that
C-STORE with a failure status and an Error Comment; the association goes on.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing.util
import tempfile
import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom import _config as netconfig
from pynetdicom.events import Event
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    StoragePresentationContexts,
    build_context,
)
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom builds its SOP class names at import time
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
    uid_to_service_class,
)
from pynetdicom.transport import ThreadedAssociationServer

from gateway import prompt_reactors, whole_reads
from gateway import status_codes as dimse
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.integrity import Damaged, verify
from gateway.metrics import Metrics
from gateway.netutil import no_delay
from gateway.pseudonym import Pseudonymizer
from gateway.ready_files import ReadyFiles
from gateway.retrieval.handlers import QueryRetrieve
from gateway.retrieval.vocabulary import Policy
from gateway.sop_classes import is_image
from gateway.spool import Described, Spool, SpoolError
from gateway.storage_commitment import StorageCommitment
from gateway.tls import peer_common_name, server_context

log = logging.getLogger("gateway.listener")

# Every transfer syntax pydicom knows, explicit VR first: a modality's object is taken as it
# comes (JPEG and all), and where both are offered explicit VR keeps private VRs intact.
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian] + [ts for ts in AllTransferSyntaxes if ts != ExplicitVRLittleEndian]
QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
)
_OUTCOMES = {dimse.SUCCESS: "success", dimse.OUT_OF_RESOURCES: "out_of_resources",
             dimse.UNABLE_TO_PROCESS: "cannot_understand", dimse.NOT_AUTHORIZED: "not_authorized",
             dimse.SOP_CLASS_NOT_SUPPORTED: "sop_class_not_supported",
             dimse.DOES_NOT_MATCH_SOP_CLASS: "does_not_match_sop_class"}
_INTAKE_TAGS = [0x00080016, 0x00080018, 0x00080060, 0x0020000E]


class _Contexts(list[PresentationContext]):
    """The server's supported contexts. pynetdicom deep-copies them for every association:
    170 storage classes x 39 transfer syntaxes took 39 ms a copy (a C-STORE of one object
    took 50 ms longer than Orthanc's). UIDs are immutable strings: a copy of each context
    with its own list of transfer syntaxes is as good."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class Listener:
    """A pynetdicom SCP: storage in front of the spool, Q/R in front of Orthanc."""

    def __init__(self, config: Config, spool: Spool, pseudonyms: Pseudonymizer, qr: QueryRetrieve,
                 audit: AuditLog, metrics: Metrics, commitment: StorageCommitment | None = None) -> None:
        self.config = config
        self.commitment = commitment
        self.metrics = metrics
        self.spool = spool
        self.pseudonyms = pseudonyms
        self.qr = qr
        self.audit = audit
        ae = AE(ae_title=config.listener.ae_title)
        ae.maximum_associations = config.listener.max_associations
        ae.maximum_pdu_size = config.listener.max_pdu
        ae.supported_contexts = [build_context(str(cx.abstract_syntax), list(TRANSFER_SYNTAXES))
                                 for cx in AllStoragePresentationContexts]
        for cx in ae.supported_contexts:  # C-GET sends over the workstation's association
            cx.scp_role, cx.scu_role = True, False
        ae.add_supported_context(Verification)
        for model in QR_MODELS:
            ae.add_supported_context(model)
        if commitment is not None:
            ae.add_supported_context(StorageCommitmentPushModel)
        ae.requested_contexts = StoragePresentationContexts  # C-MOVE to a destination
        self.ae = ae
        prompt_reactors.install()  # no 1 ms polling between a C-STORE's steps
        whole_reads.install()  # a PDU read in large pieces, not in 4 KB ones
        # Objects stream to a file in the spool as they arrive, so a 2 GB study never sits
        # in memory; the spool takes the file in by a hard link. pynetdicom makes that file
        # with tempfile, so this process's temporary folder is the spool's receiving folder.
        # multiprocessing's own folder (the forkserver's socket, whose path AF_UNIX limits to
        # 107 bytes) is fixed first, in the system's temporary folder, not under the spool.
        multiprocessing.util.get_temp_dir()
        netconfig.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(spool.receiving)
        self._files = ReadyFiles(spool.receiving)  # created before the objects come
        # C-STOREs whose request named a SOP class no storage service knows, by (association,
        # message ID): the SOP class they named (see _on_dimse_recv).
        self._foreign_class: dict[tuple[int, int], str] = {}
        self._foreign_lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: dimse.SUCCESS),
            (evt.EVT_C_FIND, self.qr.on_find),
            (evt.EVT_C_MOVE, self.qr.on_move),
            (evt.EVT_C_GET, self.qr.on_get),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_DIMSE_RECV, self._on_dimse_recv),
            (evt.EVT_CONN_OPEN, no_delay),
        ]
        if self.commitment is not None:
            handlers.append((evt.EVT_N_ACTION, self.commitment.on_n_action))
        listen = self.config.listener
        ssl_context = server_context(listen.tls) if listen.tls is not None else None
        server = self.ae.start_server((listen.host, listen.port), block=False, evt_handlers=handlers,
                                      ssl_context=ssl_context)
        assert server is not None  # block=False returns the server
        server.contexts = _Contexts(server.contexts)
        self._server = server
        self._files.install()
        log.info("listening as %s on %s:%d%s", listen.ae_title, listen.host, listen.port,
                 " (DICOM TLS)" if ssl_context else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._files.stop()

    def _is_sender(self, calling: str, address: str, subject: str | None) -> bool:
        return any(s.matches(calling, address, subject) for s in self.config.senders)

    def _on_requested(self, event: Event) -> None:
        """Accept configured senders and workstations whose policy is not deny, from their
        configured address; reject (and audit) everyone else."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive is not None else "").strip()
        address = assoc.requestor.address
        subject = peer_common_name(assoc)
        policy = self.config.retrieval.policy(calling, address, subject)
        if self._is_sender(calling, address, subject) or policy in (Policy.RESTORE, Policy.PSEUDONYMIZED):
            return
        self.audit.record(calling, address, "associate", "refused", policy=policy)
        self.metrics.associations_refused.inc()
        log.warning("association from %s as %r refused: not a configured sender or workstation", address, calling)
        # rejected-permanent, by the service user, calling AE title not recognised
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def describe(self, path: Path) -> Described:
        """The spool's tokens of an object read with pydicom: for one the structural walk
        found damaged (``inspect``)."""
        head = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_INTAKE_TAGS)
        return (self.pseudonyms.uid(str(head.SeriesInstanceUID)), self.pseudonyms.uid(str(head.SOPInstanceUID)),
                str(head.get("Modality", "") or ""), str(head.get("SOPClassUID", "") or ""))

    def inspect(self, path: Path) -> tuple[Described, str | None]:
        """What the spool keeps of a received object (pseudonymous tokens, modality, class)
        and what is damaged in it (None: whole). The structural walk reads the header on its
        way; a damaged object kept for quarantine (``listener.damaged``) is read with pydicom
        instead. Raises ``Damaged`` where damaged objects are refused, and whatever pydicom
        raises where the object cannot be read at all."""
        try:
            header = verify(path)
            if not (header.series and header.sop_instance):
                raise Damaged("no Series or SOP Instance UID")
        except Damaged as exc:
            if self.config.listener.damaged == "refuse":
                raise
            return self.describe(path), str(exc)
        return (self.pseudonyms.uid(header.series), self.pseudonyms.uid(header.sop_instance), header.modality,
                header.sop_class), None

    def _on_dimse_recv(self, event: Event) -> None:
        """Keep one odd C-STORE from ending the association.

        pynetdicom picks the service by the request's Affected SOP Class UID before any
        handler runs, and aborts the association when no service knows that UID (a
        modality that names "31" on a CT context). Such a request is handed to the storage
        service of its presentation context instead; the UID it named is remembered, and
        ``_store`` answers that request alone with 0x0122.
        """
        command = event.message.command_set
        if command.get("CommandField") != 0x0001:  # C-STORE-RQ
            return
        named = str(command.get("AffectedSOPClassUID") or "")
        if uid_to_service_class(named) is StorageServiceClass:
            return
        context_id = event.message.context_id
        context = next((cx for cx in event.assoc.accepted_contexts if cx.context_id == context_id), None)
        if context is None or uid_to_service_class(str(context.abstract_syntax)) is not StorageServiceClass:
            return  # not a storage context: pynetdicom's own handling stands
        with self._foreign_lock:
            self._foreign_class[(id(event.assoc), int(command.MessageID))] = named
        command.AffectedSOPClassUID = context.abstract_syntax

    def _on_store(self, event: Event) -> int | Dataset:
        status, comment = self._store(event)
        self.metrics.c_store.labels(outcome=_OUTCOMES.get(status, hex(status))).inc()
        if comment is None:
            return status
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = comment[:64]
        return answer

    def _store(self, event: Event) -> tuple[int, str | None]:
        """(status, Error Comment) for one C-STORE; the comment names a problem, never a value.
        The object gets its spool name and starts becoming durable first (``Spool.arrive``),
        while it is checked and its row written; Success waits for both."""
        calling = event.assoc.requestor.ae_title.strip()
        address = event.assoc.requestor.address
        refusal = self._admit(event, calling, address)
        if refusal is not None:
            return refusal
        received = event.dataset_path
        arrival = self.spool.arrive(received, calling, str(event.assoc.acceptor.ae_title).strip(), address)
        try:
            (series_token, sop_token, modality, sop_class), damage = self.inspect(received)
        except Damaged as exc:
            self.spool.turn_away(arrival)
            return self._refuse(calling, address, None, dimse.UNABLE_TO_PROCESS, f"damaged: {exc}")
        except Exception as exc:  # noqa: BLE001 - pydicom meets damaged input with many types
            # (OSError, struct.error, ValueError, ...); whatever it is, the modality gets an
            # answer and the log gets the type only: the message may quote the content.
            self.spool.turn_away(arrival)
            return self._refuse(calling, address, None, dimse.UNABLE_TO_PROCESS,
                                f"object cannot be read ({type(exc).__name__})")
        refusal = self._fits(event, calling, address, sop_token, sop_class)
        if refusal is not None:
            self.spool.turn_away(arrival)
            return refusal
        if damage is not None:
            self.audit.record(calling, address, "store", "quarantined", object=sop_token, series=series_token,
                              reason=f"damaged: {damage}")
            log.warning("C-STORE of %s from %s is damaged (%s); kept for quarantine (listener.damaged)",
                        sop_token, calling, damage)
        try:
            self.spool.accept(arrival, calling_ae=calling, series_token=series_token, sop_token=sop_token,
                              modality=modality, sop_class_uid=sop_class, damage=damage)
        except SpoolError as exc:
            log.error("C-STORE of %s from %s answered out-of-resources: %s", sop_token, calling, exc)
            return dimse.OUT_OF_RESOURCES, "the spool cannot store the object; send again later"
        return dimse.SUCCESS, None

    def _admit(self, event: Event, calling: str, address: str) -> tuple[int, str | None] | None:
        """A refusal before the object is read: unknown sender, a request naming no storage
        class, a spool below its reserve; None to go on."""
        with self._foreign_lock:
            named = self._foreign_class.pop((id(event.assoc), int(event.request.MessageID or 0)), None)
        if not self._is_sender(calling, address, peer_common_name(event.assoc)):
            log.warning("C-STORE from %s refused: not a configured sender", calling)
            return dimse.NOT_AUTHORIZED, None
        if named is not None:
            return self._refuse(calling, address, None, dimse.SOP_CLASS_NOT_SUPPORTED,
                                "the request names a SOP class that is not a storage class")
        # This object's protected copy will need about its size again, beyond the reserve.
        if self.spool.room() - event.dataset_path.stat().st_size < self.config.spool.free_space_reserve_mb * 2**20:
            log.error("C-STORE from %s answered out-of-resources: the spool is below its free-space reserve",
                      calling)
            return dimse.OUT_OF_RESOURCES, "spool below its free-space reserve; send again later"
        return None

    def _fits(self, event: Event, calling: str, address: str, sop_token: str,
              sop_class: str) -> tuple[int, str | None] | None:
        """A refusal for an object of another class than its request, or a non-image the
        listener refuses; None to go on."""
        context_class = str(event.context.abstract_syntax)
        if context_class != sop_class or context_class != str(event.request.AffectedSOPClassUID):
            return self._refuse(calling, address, sop_token, dimse.DOES_NOT_MATCH_SOP_CLASS,
                                "SOP Class UID of the data set differs from the request's")
        if self.config.listener.non_image == "refuse" and not is_image(sop_class):
            log.warning("C-STORE of %s from %s refused: %s is not an image (listener.non_image: refuse)",
                        sop_token, calling, UID(sop_class).name)
            return dimse.SOP_CLASS_NOT_SUPPORTED, "not an image (listener.non_image: refuse)"
        return None

    def _refuse(self, calling: str, address: str, sop_token: str | None, status: int, reason: str) -> tuple[int, str]:
        """A failure status for one object: logged and audited, by pseudonym, without values."""
        log.warning("C-STORE of %s from %s refused (0x%04X): %s", sop_token or "an object", calling, status, reason)
        self.audit.record(calling, address, "store", "refused", object=sop_token, status=f"0x{status:04X}",
                          reason=reason)
        return status, reason
