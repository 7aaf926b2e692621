"""The DICOM listener: C-ECHO and C-STORE from configured modalities.

Associations are accepted only from configured calling AE titles, and from their
address where one is configured; anyone else is rejected at association
(A-ASSOCIATE-RJ, "calling AE title not recognised"). A C-STORE answers Success only
after the spool has made the object durable; if it cannot, the answer is 0xA700 (out of
resources) and the modality sends again later.
"""

from __future__ import annotations

import io
import logging
import socket

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from gateway.config import Config
from gateway.pseudonym import Pseudonymizer
from gateway.spool import Spool, SpoolError

log = logging.getLogger("gateway.listener")

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
SUCCESS = 0x0000
_INTAKE_TAGS = [0x00080016, 0x00080018, 0x00080060, 0x0020000E]


class Listener:
    """A pynetdicom storage SCP in front of the spool."""

    def __init__(self, config: Config, spool: Spool, pseudonyms: Pseudonymizer) -> None:
        self.config = config
        self.spool = spool
        self.pseudonyms = pseudonyms
        self._allowed = {(s.ae_title, s.host) for s in config.senders}
        ae = AE(ae_title=config.listener.ae_title)
        ae.maximum_associations = config.listener.max_associations
        ae.maximum_pdu_size = config.listener.max_pdu
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.ae = ae
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_OPEN, _no_delay),
        ]
        listen = self.config.listener
        self._server = self.ae.start_server((listen.host, listen.port), block=False, evt_handlers=handlers)
        log.info("listening as %s on %s:%d", listen.ae_title, listen.host, listen.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _on_requested(self, event: Event) -> None:
        """Reject a known AE title that calls from an address it is not configured for."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = assoc.requestor.address
        if (calling, None) in self._allowed or (calling, address) in self._allowed:
            return
        log.warning("association from %s as %r refused: not a configured sender", address, calling)
        # rejected-permanent, by the service user, calling AE title not recognised
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def _on_store(self, event: Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            raw = event.encoded_dataset()
            head = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=_INTAKE_TAGS)
            series_uid = str(head.SeriesInstanceUID)
            sop_uid = str(head.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError) as exc:
            log.warning("C-STORE from %s refused: object cannot be read (%s)", calling, type(exc).__name__)
            return CANNOT_UNDERSTAND
        series_token = self.pseudonyms.uid(series_uid)
        sop_token = self.pseudonyms.uid(sop_uid)
        try:
            self.spool.accept(
                raw,
                calling_ae=calling,
                series_token=series_token,
                sop_token=sop_token,
                modality=str(head.get("Modality", "") or ""),
                sop_class_uid=str(head.get("SOPClassUID", "") or ""),
            )
        except SpoolError as exc:
            log.error("C-STORE of %s from %s answered out-of-resources: %s", sop_token, calling, exc)
            return OUT_OF_RESOURCES
        return SUCCESS


def _no_delay(event: Event) -> None:
    """Answer each C-STORE at once: with Nagle's algorithm every response waits ~40 ms."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
