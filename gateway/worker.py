"""Background jobs: protect settled series, forward protected objects, purge originals.

Protection and forwarding run in threads of their own, so that a series waits for no poll:
protection wakes at the interval or at the moment the next series settles, forwarding at
the interval or as soon as a series was protected. apscheduler runs the other jobs at
intervals, each never overlapping itself. A job that meets an unexpected error logs it
(without PHI) and runs again at its next interval: the spool keeps every state, so nothing
is lost between runs or across a restart.

Faults of the infrastructure (a full disk, a locked or unwritable database, Orthanc down)
are never the series' fault: the series waits, with backoff, and is protected once the
fault is gone. Only what is wrong with the series itself quarantines it.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.dataset import Dataset
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gateway.audit import AuditLog
from gateway.authenticity import AuthenticityError
from gateway.config import Config, Route
from gateway.delivery import Deliverer, header_and_origin, stage_copies, study_still_receiving
from gateway.envelope import EnvelopeError
from gateway.forwarder import Forwarder, Refused, Unreachable
from gateway.index import Entry, Index, Sealing
from gateway.keyring import Keyring
from gateway.plugin import PluginError
from gateway.protect import Protected, Quarantine, protect_batches
from gateway.protect_ahead import Ahead
from gateway.protect_pool import ProtectPool
from gateway.publish import Opened, Outcome, Published, confirmed, open_for_publishing, upload
from gateway.route_spec import RouteSpec, route_spec
from gateway.sop_classes import is_image
from gateway.spool import FileIdentity, Incoming, LeaseLost, Outgoing, Spool, SpoolError
from gateway.stages import is_series_level

log = logging.getLogger("gateway.worker")
# Uploads in flight to Orthanc at once, each on its own keep-alive connection.
FORWARD_CONNECTIONS = 4
# Index entries protection handed on, waiting for their upload; beyond this the oldest go
# (their objects are then opened again when forwarded).
PREPARED_LIMIT = 20_000
# How often objects that arrived are protected ahead of their series' settling (``protect_ahead``).
AHEAD_SECONDS = 0.2
# The backoff entry of claiming itself (the state database refused the claim's write).
_CLAIM = "(next settled)"
_T = TypeVar("_T")


class Worker:
    """The jobs of one gateway process."""

    def __init__(self, config: Config, keyring: Keyring, spool: Spool, forwarder: Forwarder, index: Index,
                 audit: AuditLog) -> None:
        self.config = config
        self.audit = audit
        self.index = index
        self.keyring = keyring
        self.spool = spool
        self.forwarder = forwarder
        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._stop = threading.Event()
        # Series waiting out an infrastructure fault: token -> (attempts, not before).
        self._backoff: dict[str, tuple[int, float]] = {}
        self.deliverer = Deliverer(config, spool, keyring)
        self.protect_pool = ProtectPool(keyring)  # started with the jobs (start), not before
        self._forward_ready = threading.Event()  # set: run forward_due now
        # What protection handed on for the copies in the outbox, by path (``Protected``).
        self._prepared: dict[Path, Protected] = {}
        self._prepared_lock = threading.Lock()
        self.ahead = Ahead(spool, keyring, self.protect_pool, self._ahead_route,
                           lambda: self.config.scheduler.settle_seconds)
        self._forwarding = threading.Thread(target=self._forward_loop, name="forward", daemon=True)
        self._ahead = threading.Thread(target=self._ahead_loop, name="protect-ahead", daemon=True)
        self._protecting = threading.Thread(target=self._protect_loop, name="protect", daemon=True)

    def start(self) -> None:
        every = self.config.scheduler.poll_seconds
        self._protecting.start()
        self._forwarding.start()
        self._ahead.start()
        self._scheduler.add_job(self._guard(self.deliverer.deliver_due), "interval", seconds=every, id="deliver")
        self._scheduler.add_job(self._guard(self.purge), "interval", seconds=max(every, 60), id="purge")
        self._scheduler.add_job(self._guard(self.spool.renew_leases), "interval",
                                seconds=self.spool.state.lease_seconds / 3, id="leases")
        self._scheduler.start()
        self.protect_pool.warm()

    def stop(self) -> None:
        self._stop.set()
        self._forward_ready.set()
        self.deliverer.stop()
        self._scheduler.shutdown(wait=True)
        for thread in (self._protecting, self._forwarding, self._ahead):
            if thread.is_alive():
                thread.join()
        self.protect_pool.close()

    def _protect_loop(self) -> None:
        """``process_settled`` every ``poll_seconds``, or sooner: at the moment the next
        series still receiving settles."""
        protect = self._guard(self.process_settled)
        every = self.config.scheduler.poll_seconds
        while not self._stop.is_set():
            protect()
            try:
                settles = self.spool.next_settle(self.config.scheduler.settle_seconds)
            except Exception:  # noqa: BLE001 - the state database is down: poll, as process_settled will say
                settles = None
            wait = every if settles is None else min(every, max(0.0, settles - time.time()) + 0.01)
            self._stop.wait(wait)

    def _ahead_loop(self) -> None:
        """``ahead.step`` every ``AHEAD_SECONDS``: series that paused are protected before they settle."""
        step = self._guard(lambda: self.ahead.step(self._stop))
        while not self._stop.wait(AHEAD_SECONDS):
            step()

    def _forward_loop(self) -> None:
        """``forward_due`` every ``poll_seconds``, or at once when woken (``_forward_ready``);
        a wake-up during a run runs it again, so none is lost."""
        forward = self._guard(self.forward_due)
        while not self._stop.is_set():
            self._forward_ready.wait(self.config.scheduler.poll_seconds)
            self._forward_ready.clear()
            if not self._stop.is_set():
                forward()

    def _guard(self, job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception:  # a job must never die; the spool keeps the state
                log.exception("background job %s failed; it runs again at its next interval", job.__name__)

        return run

    # -- protect ------------------------------------------------------------------------

    def process_settled(self) -> None:
        """Protect settled series one at a time, each under this node's lease (another node
        may be protecting the others); a series seen once in this pass, or waiting out a
        fault, is left for the next pass."""
        seen: set[str] = set()
        while not self._stop.is_set():
            now = time.time()
            waiting = {token for token, (_, after) in self._backoff.items() if after > now}
            if _CLAIM in waiting:
                return
            try:
                token = self.spool.claim_series(self.config.scheduler.settle_seconds, seen | waiting)
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                self._wait(_CLAIM, exc)  # a claim is a write: a full disk stops it too
                return
            self._backoff.pop(_CLAIM, None)
            if token is None:
                return
            seen.add(token)
            try:
                self.process_series(token)
            except LeaseLost as exc:
                log.warning("%s; the series is left to that node", exc)
            finally:
                self.spool.release_series(token)  # nothing where another node holds it now

    def process_series(self, token: str) -> None:
        items = self.spool.received(token)
        if not items:
            return
        ids = [i.id for i in items]
        chosen = self._route(token, items)
        if chosen is None:
            return
        route, header = chosen
        damaged = next((i.damage for i in items if i.damage), None)
        if damaged is not None:  # kept by listener.damaged: quarantine, never protected
            self._quarantine(token, route.name, damaged, ids)
            return
        study = str(header.get("StudyInstanceUID", "")) if header is not None else ""
        settle = self.config.scheduler.settle_seconds
        if route.level == "study" and study_still_receiving(self.spool, token, study, settle):
            return  # the study has not settled: its series go together, later
        if not self._takes_all(items):
            self._quarantine(token, route.name, "non-image objects are kept for review (listener.non_image)", ids)
            return
        staged = self._protect(token, route, items)
        if staged is not None:
            self._finish(token, route, ids, staged)

    def _route(self, token: str, items: list[Incoming]) -> tuple[Route, Dataset | None] | None:
        """The series' route (the one ``reroute`` forced, else the first that matches) and the
        header it was matched on; None when the series went to quarantine instead."""
        chosen = self._choose(token, items)
        if isinstance(chosen, str):
            self._quarantine(token, None, chosen, [i.id for i in items])
            return None
        return chosen

    def _choose(self, token: str, items: list[Incoming]) -> tuple[Route, Dataset | None] | str:
        """The series' route and the header it was matched on, or why there is none."""
        first = items[0]
        forced = self.spool.forced_route(token)
        try:
            header, called, address = header_and_origin(first, self.config)
        except Exception as exc:  # noqa: BLE001 - as for any unreadable object: type only
            return f"header cannot be read for routing ({type(exc).__name__})"
        route = (next((r for r in self.config.routes if r.name == forced), None) if forced
                 else self.config.route_for(first.calling_ae, first.modality, first.sop_class_uid, called, address,
                                            header))
        if route is None:
            return (f"the route {forced!r} named by reroute no longer exists" if forced
                    else "no route matches this series")
        return route, header

    def _ahead_route(self, token: str, items: list[Incoming]) -> tuple[str, RouteSpec] | None:
        """The route a series still arriving is protected ahead for (``protect_ahead``): one
        that sends it to Orthanc, takes all its objects, and protects object by object. On a
        cluster, the node that took in the series' first object protects it ahead."""
        if not self.spool.took_in(items[0].path):
            return None
        chosen = self._choose(token, items)
        if isinstance(chosen, str) or any(i.damage for i in items) or not self._takes_all(items):
            return None
        route = chosen[0]
        spec = route_spec(self.config, route.name)
        if not any(d.destination == "orthanc" for d in route.destinations) or is_series_level(spec.plugin):
            return None
        return route.name, spec

    def _takes_all(self, items: list[Incoming]) -> bool:
        return self.config.listener.non_image == "protect" or all(is_image(i.sop_class_uid) for i in items)

    def _protect(self, token: str, route: Route, items: list[Incoming]) -> list[int] | None:
        """Protected copies for Orthanc (in the spool's outputs) and for the route's other
        destinations (staged deliveries); None when the series was quarantined or must wait."""
        ids = [i.id for i in items]
        to_main = any(d.destination == "orthanc" for d in route.destinations)
        try:
            spec = route_spec(self.config, route.name)
            ahead = self.ahead.complete(token, items, route.name, spec) if to_main else None
            if ahead is not None:
                self.spool.outputs_written()
                self._hand_on(ahead)
            # each protected copy is written to the outbox by the process that protected it;
            # its name is made durable with the batch's (one folder fsync)
            for batch in (protect_batches([i.path for i in items], spec, self.keyring, self.spool,
                                          self.protect_pool, [self.spool.output_path(i) for i in ids])
                          if to_main and ahead is None else ()):
                self.spool.outputs_written()
                self._hand_on(batch)
            return stage_copies(self.config, self.keyring, self.spool, route, token, items,
                                lambda name: route_spec(self.config, route.name, name))
        except (Quarantine, PluginError) as exc:
            self.spool.discard_outputs(ids)
            self._quarantine(token, route.name, str(exc), ids)
        except BrokenProcessPool:  # killed (memory) or crashed (a decoder on this data): not again and again
            self.spool.discard_outputs(ids)
            if self._stop.is_set():  # ended with the service: the series waits for the next start
                return None
            self._quarantine(token, route.name, "a protect process ended abruptly (out of memory, or a crash on this"
                             " series' data); release the series to try again", ids)
        except Exception as exc:  # noqa: BLE001 - one poisonous series must not stall the others
            self.spool.discard_outputs(ids)
            if is_infrastructure(exc):
                self._wait(token, exc)
            else:  # the exception's text may quote the object's content; its type names the fault
                self._quarantine(token, route.name, f"internal error while protecting ({type(exc).__name__})", ids)
        return None

    def _hand_on(self, batch: list[Protected]) -> None:
        """Keep what protection made of each copy for its upload (``_prepared_for``)."""
        with self._prepared_lock:
            for protected in batch:
                if protected.path is not None and protected.written is not None:
                    self._prepared.pop(protected.path, None)  # a re-protected copy goes to the end
                    self._prepared[protected.path] = protected
            while len(self._prepared) > PREPARED_LIMIT:
                del self._prepared[next(iter(self._prepared))]

    def _prepared_for(self, path: Path, read: FileIdentity) -> Protected | None:
        """What protection handed on for the copy at ``path``, if it is the very file that
        was read (not one rewritten since, by a re-protection here or on another node)."""
        with self._prepared_lock:
            protected = self._prepared.pop(path, None)
        return protected if protected is not None and protected.written == read else None

    def _finish(self, token: str, route: Route, ids: list[int], staged: list[int]) -> None:
        def record() -> None:  # the series' result and its staged copies in one transaction
            if any(d.destination == "orthanc" for d in route.destinations):
                self.spool.protected(token, route.name, ids, staged)
            else:
                self.spool.handed_on(token, route.name, ids, staged)

        if not self._recorded(token, record):
            return
        self._forward_ready.set()
        log.info("series %s: %d objects protected by route %s for %s", token, len(ids), route.name,
                 ", ".join(d.destination for d in route.destinations))

    def _wait(self, token: str, exc: BaseException) -> None:
        """The disk or database, not the series: try again later, backing off."""
        attempts = self._backoff.get(token, (0, 0.0))[0]
        delay = self.config.scheduler.retry_delay(attempts)
        self._backoff[token] = (attempts + 1, time.time() + delay)
        log.error("series %s waits %.1f s for the spool (%s: %s); it is not quarantined", token, delay,
                  type(exc).__name__, _infrastructure_text(exc))

    def _recorded(self, token: str, record: Callable[[], None]) -> bool:
        """Run a spool write that settles the series; a disk or database fault makes the series
        wait with backoff instead (False), anything else is raised."""
        try:
            record()
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            self._wait(token, exc)
            return False
        self._backoff.pop(token, None)
        return True

    def _quarantine(self, token: str, route: str | None, reason: str, ids: list[int]) -> None:
        if not self._recorded(token, lambda: self.spool.quarantine(token, route, reason, ids)):
            return
        log.warning("series %s quarantined (%d objects): %s", token, len(ids), reason)
        self.audit.record("gateway", "-", "quarantine", "quarantined", series=token, route=route, objects=len(ids),
                          reason=reason)

    # -- forward ------------------------------------------------------------------------

    def forward_due(self) -> None:
        """Upload due objects over ``FORWARD_CONNECTIONS`` connections at once (Orthanc's
        answer, not the gateway, is the wait). The spool hands out one copy of a SOP instance
        at a time, the oldest (``Spool.due``), so a correction still ends as the one copy. A
        batch's index entries, then its spool states, are written in one transaction each."""
        down = threading.Event()
        with ThreadPoolExecutor(FORWARD_CONNECTIONS, thread_name_prefix="forward") as pool:
            while not self._stop.is_set() and not down.is_set():
                batch = self.spool.due()
                if not batch:
                    return
                done = _Forwarded()
                self._forward_batch(batch, pool, down, done)
                self.index.put_many(done.entries)
                self.spool.forwarded_many(done.ids)
                for error in done.errors:
                    raise error  # an unexpected error: the guard logs it

    def _forward_batch(self, items: list[Outgoing], pool: ThreadPoolExecutor, down: threading.Event,
                       done: _Forwarded) -> None:
        """Orthanc asked once which copies it holds of all the batch's SOP instances, and the
        index once for their entries; then each object read, opened and (where changed)
        uploaded on one connection, so that one object's opening overlaps another's upload;
        Orthanc asked once more that each upload is the one copy of its instance. The batch
        is asked about by its SOP tokens, which are the protected SOP Instance UIDs unless a
        route's profile keeps the original UIDs; an object whose UID differs is asked about
        on its own."""
        tokens = {item.sop_token for item in items}
        held = self._asked(items, down, lambda: self.forwarder.copies_of(sorted(tokens)))
        if held is None:
            return
        known = self.index.get_many(sorted(tokens), self.keyring)

        def previous(uid: str) -> Entry | None:
            return known.get(uid) if uid in tokens else self.index.get(uid, self.keyring)

        def publish(item: Outgoing) -> tuple[Opened, Published]:
            data, read = FileIdentity.read(item.out_path)
            ready = self._prepared_for(item.out_path, read)
            opened = (Opened(data, ready.entry, ready.sealing, previous(ready.entry.sop_uid), ready.tag_at)
                      if ready is not None else open_for_publishing(data, self.keyring, previous))
            uid = opened.entry.sop_uid
            copies = held.get(uid, []) if uid in tokens else self.forwarder.copies_of([uid]).get(uid, [])
            result = upload(opened, copies, self.keyring, self.forwarder)
            return replace(opened, data=b""), result  # a batch holds its entries, not its objects

        published = self._each(pool, items, down, done, publish)
        uploaded = [item for item, (_, p) in published.items() if p.outcome is not Outcome.UNCHANGED]
        after = self._asked(uploaded, down, lambda: self.forwarder.copies_of(
            [published[item][0].entry.sop_uid for item in uploaded]), always=True) if uploaded else {}
        if after is None:
            return
        for item, (opened, result) in published.items():
            try:
                entries = [confirmed(opened, result, after.get(opened.entry.sop_uid, []))] if item in uploaded else []
            except Unreachable as exc:
                if not self._unsent(item, exc):
                    down.set()
                continue
            self._published(item, result, entries, done)

    def _each(self, pool: ThreadPoolExecutor, items: list[Outgoing], down: threading.Event, done: _Forwarded,
              step: Callable[[Outgoing], _T]) -> dict[Outgoing, _T]:
        """``step`` for every item on the upload connections; the items it failed for are
        dealt with (``_unsent``) and left out, an unexpected error kept for after the batch."""
        def attempt(item: Outgoing) -> tuple[Outgoing, _T | None]:
            if down.is_set() or self._stop.is_set():
                return item, None
            try:
                return item, step(item)
            except Exception as exc:  # noqa: BLE001 - sorted by _unsent
                try:
                    if not self._unsent(item, exc):
                        down.set()
                except Exception as unexpected:  # noqa: BLE001 - raised once the batch is written
                    done.fail(unexpected)
                return item, None

        return {item: value for item, value in pool.map(attempt, items) if value is not None}

    def _asked(self, items: list[Outgoing], down: threading.Event, ask: Callable[[], dict[str, list[str]]],
               always: bool = False) -> dict[str, list[str]] | None:
        """Orthanc's answer about a batch; None (and the batch waits) when there is none, or
        when Orthanc is known to be down, unless ``always`` (what was uploaded is checked
        even when another upload found Orthanc down since)."""
        if not items or (down.is_set() and not always):
            return None
        try:
            return ask()
        except Unreachable as exc:
            for item in items:
                self.spool.retry_later(item.id, self.config.scheduler.retry_delay(item.attempts), str(exc))
            log.warning("forward of %d objects deferred: %s", len(items), exc)
            down.set()
            return None

    def _unsent(self, item: Outgoing, exc: Exception) -> bool:
        """Deal with an object that could not be published: try again later, or fail it for
        good. False when Orthanc or the spool is down (the rest of the batch waits too);
        an error of no known kind is raised."""
        if isinstance(exc, Unreachable):
            delay = self.config.scheduler.retry_delay(item.attempts)
            self.spool.retry_later(item.id, delay, str(exc))
            log.warning("series %s: forward deferred %.0f s: %s", item.series_token, delay, exc)
            return False
        if isinstance(exc, (OSError, SpoolError)):
            if not is_infrastructure(exc):  # e.g. the protected copy is gone: nothing to retry
                self.spool.failed(item.id, f"protected copy unreadable ({type(exc).__name__})")
                log.error("series %s: forward failed for good: protected copy unreadable", item.series_token)
                return True
            delay = self.config.scheduler.retry_delay(item.attempts)
            self.spool.retry_later(item.id, delay, f"spool: {type(exc).__name__}")
            log.error("series %s: protected copy unreadable, retrying in %.0f s: %s", item.series_token, delay,
                      type(exc).__name__)
            return False
        if isinstance(exc, (Refused, EnvelopeError, AuthenticityError)):
            self.spool.failed(item.id, str(exc))
            log.error("series %s: forward failed for good: %s", item.series_token, exc)
            return True
        raise exc

    def _published(self, item: Outgoing, published: Published, entries: list[tuple[Entry, Sealing]],
                   done: _Forwarded) -> None:
        if published.outcome is Outcome.SUPERSEDED:
            self.audit.record("gateway", "-", "supersede", "success", study=published.study_uid,
                              instance=published.orthanc_id, copies_replaced=published.replaced)
        done.add(item.id, entries)

    def purge(self) -> None:
        n = self.spool.purge_originals(self.config.spool.retention_hours)
        if n:
            log.info("purged %d forwarded originals past retention", n)
        days = self.config.spool.quarantine_retention_days
        for token in self.spool.expired_set_aside(days):
            deleted = self.spool.delete_set_aside(token, action="retention_purge")
            self.audit.record("gateway", "-", "quarantine_purge", "done", series=token, objects=deleted,
                              reason=f"quarantine_retention_days ({days:g}) passed")
            log.warning("series %s: %d set-aside original(s) deleted after %g days (quarantine_retention_days)",
                        token, deleted, days)


class _Forwarded:
    """What one batch published: index entries and spool ids, written after the batch, and
    unexpected errors, raised after that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: list[int] = []
        self.entries: list[tuple[Entry, Sealing]] = []
        self.errors: list[Exception] = []

    def fail(self, error: Exception) -> None:
        with self._lock:
            self.errors.append(error)

    def add(self, row_id: int, entries: list[tuple[Entry, Sealing]]) -> None:
        with self._lock:  # in the order published: a correction's entry after its first copy's
            self.ids.append(row_id)
            self.entries += entries


def is_infrastructure(exc: BaseException) -> bool:
    """A fault of the disk or database (to wait out), not of the series (to quarantine)."""
    if isinstance(exc, (SpoolError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, (OperationalError, InterfaceError)):  # the state database: locked, full, unreachable
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS,
                                                      errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE)


def _infrastructure_text(exc: BaseException) -> str:
    """The fault without any path or content: errno name or SQLite's message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, DBAPIError):  # the driver's message, not the statement and its values
        return str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    return str(exc) if isinstance(exc, (SpoolError, sqlite3.Error)) else ""
