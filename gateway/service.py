"""One gateway process: spool, DICOM listener, background workers."""

from __future__ import annotations

import logging

from gateway.atna import forwarder_for
from gateway.audit import AuditLog, audit_path
from gateway.config import Config
from gateway.forwarder import Forwarder
from gateway.index import Index
from gateway.keyring import Keyring
from gateway.listener import Listener
from gateway.metrics import Metrics
from gateway.pacs_reader import PacsReader
from gateway.pseudonym import Pseudonymizer
from gateway.retrieval.handlers import QueryRetrieve
from gateway.spool import Spool
from gateway.state.engine import open_state
from gateway.status_http import StatusServer
from gateway.storage_commitment import StorageCommitment
from gateway.worker import Worker

log = logging.getLogger("gateway.service")


class Service:
    """Starts and stops the parts in the order that loses nothing."""

    def __init__(self, config: Config, keyring: Keyring) -> None:
        self.config = config
        # SQLite is migrated here; PostgreSQL at an older schema stops the start (StateError).
        self.state = open_state(config)
        self.spool = Spool(config.spool.path, state=self.state)
        self.index = Index(self.state)
        self.audit_repository = forwarder_for(config)
        self.audit = AuditLog(audit_path(config), forward=self.audit_repository, state=self.state)
        self.metrics = Metrics()
        self.metrics.watch(self.spool)
        qr = QueryRetrieve(config, keyring, self.index, PacsReader(config.orthanc), self.audit, self.metrics)
        pseudonyms = Pseudonymizer(keyring.pseudonym_secret)
        self.commitment = StorageCommitment(config, self.spool, pseudonyms)
        self.listener = Listener(config, self.spool, pseudonyms, qr, self.audit, self.metrics, self.commitment)
        self.worker = Worker(config, keyring, self.spool, Forwarder(config.orthanc), self.index, self.audit)
        web = config.status_http
        self.status = StatusServer(web, self.spool, self.metrics) if web.enabled else None

    def start(self) -> None:
        recovered = self.spool.recover(self.listener.inspect)
        if recovered:
            log.warning("spool: %d received object(s) had lost their index row (power loss?) and got it back",
                        recovered)
        self.worker.start()
        self.commitment.start()
        self.listener.start()
        if self.status is not None:
            self.status.start()

    def apply(self, new: Config) -> None:
        """Run under ``new`` from the next association, series or request on (a reload);
        the caller has checked it (``gateway.reload.check_reloadable``)."""
        if new.audit_repository != self.config.audit_repository:
            old_forward = self.audit_repository
            self.audit_repository = forwarder_for(new)
            self.audit.forward = self.audit_repository
            if old_forward is not None:
                old_forward.close()
        for part in (self, self.listener, self.listener.qr, self.worker, self.worker.deliverer, self.commitment):
            part.config = new
        logging.getLogger().setLevel(new.log_level)

    def stop(self) -> None:
        """Stop taking objects first, then let the workers finish their current step."""
        if self.status is not None:
            self.status.stop()
        self.listener.stop()
        self.listener.qr.close()
        self.commitment.stop()
        self.worker.stop()
        self.spool.close()
        self.index.close()
        self.state.close()
        if self.audit_repository is not None:
            self.audit_repository.close()
        log.info("stopped")
