"""Routes' further destinations: other Orthanc servers (REST) and any DICOM node (C-STORE).

The main Orthanc keeps its own path (spool outbox, retrieval index). Every other
destination of a route gets its own protected copy, made with that destination's profile
and transform, staged in the spool until the whole series is protected, then delivered by
its own job with the same retry rules as the main forward: unreachable means backoff, a
refusal is final and shown in ``gateway status``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from gateway import authenticity
from gateway.config import Config, DicomDestination, Route
from gateway.forwarder import Forwarder, Refused, Unreachable
from gateway.keyring import Keyring
from gateway.netutil import no_delay
from gateway.protect import protect_batches
from gateway.route_spec import RouteSpec
from gateway.spool import Incoming, Spool, origin

log = logging.getLogger("gateway.delivery")


class CStoreSender:
    """Sends each object on an association of its own to a DICOM node; only Success (or a
    warning, which PS3.4 counts as stored) counts as delivered."""

    def __init__(self, settings: DicomDestination, calling_ae: str) -> None:
        self.settings = settings
        self.calling_ae = calling_ae

    def send(self, data: bytes) -> str:
        ds = pydicom.dcmread(io.BytesIO(data))
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.timeout_seconds
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.settings.host, self.settings.port, ae_title=self.settings.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
        if not assoc.is_established:
            raise Unreachable(f"{self.settings.ae_title} at {self.settings.host}:{self.settings.port} did not accept"
                              " an association")
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = int(status.get("Status", -1)) if status else -1
        if code == -1:
            raise Unreachable(f"{self.settings.ae_title} did not answer the C-STORE")
        if code != 0 and not 0xB000 <= code <= 0xBFFF:
            raise Refused(f"{self.settings.ae_title} refused the object (status 0x{code:04X})")
        return str(ds.SOPInstanceUID)


def sender_for(config: Config, name: str) -> Forwarder | CStoreSender:
    settings = config.destinations[name]
    if isinstance(settings, DicomDestination):
        return CStoreSender(settings, config.listener.ae_title)
    return Forwarder(settings)


def stage_copies(config: Config, keyring: Keyring, spool: Spool, route: Route, series_token: str,
                 items: list[Incoming], spec: Callable[[str], RouteSpec]) -> list[int]:
    """Protect the series once per further destination of ``route`` (``spec(destination)``
    gives its stages) and stage the copies; the caller releases or discards them."""
    staged: list[int] = []
    try:
        for dest in route.destinations:
            if dest.destination == "orthanc":
                continue
            done = 0
            for batch in protect_batches([i.path for i in items], spec(dest.destination), keyring, spool):
                for protected in batch:
                    staged.append(spool.add_delivery(items[done].id, dest.destination, series_token, protected.data))
                    done += 1
                batch.clear()
    except BaseException:
        spool.discard_deliveries(staged)
        raise
    return staged


def header_and_origin(item: Incoming, config: Config) -> tuple[Dataset | None, str, str]:
    """The object's header (no pixels; None where no route needs it) and the called AE
    title and address it came with."""
    _, called, address = origin(item.path)
    needed = any(r.match.attributes or r.level == "study" for r in config.routes)
    return (pydicom.dcmread(item.path, stop_before_pixels=True) if needed else None), called, address


def study_still_receiving(spool: Spool, series_token: str, study_uid: str, settle_seconds: float) -> bool:
    """Whether another series of the study got an object within ``settle_seconds``."""
    cutoff = time.time() - settle_seconds
    for token, path, last in spool.receiving_series():
        if token == series_token or last <= cutoff:
            continue
        try:
            other = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # noqa: BLE001 - an unreadable object is the worker's to quarantine
            continue
        if str(other.get("StudyInstanceUID", "")) == study_uid:
            return True
    return False


class Deliverer:
    """The job that sends staged copies to their destinations."""

    def __init__(self, config: Config, spool: Spool, keyring: Keyring) -> None:
        self.config = config
        self.spool = spool
        self.keyring = keyring
        self._senders: dict[object, Forwarder | CStoreSender] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def deliver_due(self) -> None:
        down: set[str] = set()  # a destination that is down waits for its backoff as a whole
        while not self._stop.is_set():
            batch = [d for d in self.spool.due_deliveries() if d[1] not in down]
            if not batch:
                return
            for delivery_id, name, series_token, attempts, path in batch:
                if name in down:
                    continue
                if name not in self.config.destinations:  # removed by a reload: leave it for an admin
                    self.spool.delivery_failed(delivery_id, f"destination {name!r} is no longer configured")
                    continue
                try:
                    # tagged like the main Orthanc's copies: another Orthanc runs the same filter
                    self._sender(name).send(authenticity.sign(Path(path).read_bytes(), self.keyring))
                except Unreachable as exc:
                    delay = self.config.scheduler.retry_delay(attempts)
                    self.spool.delivery_later(delivery_id, delay, str(exc))
                    log.warning("series %s: delivery to %s deferred %.0f s: %s", series_token, name, delay, exc)
                    down.add(name)
                    continue
                except (Refused, OSError) as exc:
                    self.spool.delivery_failed(delivery_id, str(exc))
                    log.error("series %s: delivery to %s failed for good: %s", series_token, name, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad copy must not block the queue
                    self.spool.delivery_failed(delivery_id, f"cannot be sent ({type(exc).__name__})")
                    log.error("series %s: delivery to %s failed for good (%s)", series_token, name, type(exc).__name__)
                    continue
                self.spool.delivered(delivery_id)

    def _sender(self, name: str) -> Forwarder | CStoreSender:
        key = (name, self.config.destinations[name])  # a reload that changes it gets a new sender
        if key not in self._senders:
            self._senders[key] = sender_for(self.config, name)
        return self._senders[key]
