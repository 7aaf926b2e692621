"""One gateway process: spool, DICOM listener, background workers."""

from __future__ import annotations

import logging

from gateway.config import Config
from gateway.forwarder import Forwarder
from gateway.keyring import Keyring
from gateway.listener import Listener
from gateway.pseudonym import Pseudonymizer
from gateway.spool import Spool
from gateway.worker import Worker

log = logging.getLogger("gateway.service")


class Service:
    """Starts and stops the parts in the order that loses nothing."""

    def __init__(self, config: Config, keyring: Keyring) -> None:
        self.config = config
        self.spool = Spool(config.spool.path)
        self.listener = Listener(config, self.spool, Pseudonymizer(keyring.pseudonym_secret))
        self.worker = Worker(config, keyring, self.spool, Forwarder(config.orthanc))

    def start(self) -> None:
        self.worker.start()
        self.listener.start()

    def stop(self) -> None:
        """Stop taking objects first, then let the workers finish their current step."""
        self.listener.stop()
        self.worker.stop()
        self.spool.close()
        log.info("stopped")
