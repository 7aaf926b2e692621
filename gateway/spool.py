"""The durable spool: received originals, protected copies, and their states.

A C-STORE is acknowledged only after ``accept`` returns: the object's bytes are in a file
in ``incoming/`` (fsynced, its folder fsynced: the file is the durable record, its name
carries the node that took it in and the calling AE title) and its row is committed to
the state database (``gateway.state``: SQLite in the spool folder, or the cluster's
PostgreSQL). SQLite runs WAL with synchronous=NORMAL, which survives any crash of the
process (kill -9 included); after a power loss the last commits may be gone, so at start
``recover`` gives every file of this node in ``incoming/`` without a row its row back,
from the file itself. Two fsyncs per object instead of three, the same durability.

Several nodes may share the folder and the database. A node cleans and recovers only its
own files (``receiving/<node>/``, and the node in each received file's name); a settled
series is protected by the one node that holds its lease (``claim_series``), and a
protected object is uploaded by the one node that claimed it (``due``); a lease its node
stops renewing (``renew_leases``) expires and another node takes the work over.

Rows carry pseudonymous tokens (the protected UIDs), never identity, so ``gateway
status`` and logs can name objects safely.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from gateway import envelope
from gateway.keyring import Keyring
from gateway.state.engine import SQLITE_NAME, State, sqlite_state
from gateway.state.schema import deliveries, instances, quarantine_actions, series, study_keys

# Every state an object of the spool can be in, in the order it moves through them.
SPOOL_STATES = ("received", "protected", "forwarded", "done", "quarantined", "failed", "superseded", "purged")

DAMAGE_NOTE = "damaged on intake: "
# What the spool needs to know of a received object: (series token, SOP token, modality,
# SOP class UID); the tokens are the protected UIDs, never identity.
Described = tuple[str, str, str, str]


def origin(path: Path) -> tuple[str, str, str]:
    """(calling AE title, called AE title, address) from a received file's name; the two
    last are empty for files taken in before they were recorded."""
    parts = path.name.split(".")
    called, _, address = parts[2].partition("_") if len(parts) == 4 else ("", "", "")
    return bytes.fromhex(parts[1]).decode(), bytes.fromhex(called).decode(), bytes.fromhex(address).decode()


class SpoolError(Exception):
    """The spool cannot take or give an object (disk full, permissions, corruption)."""


# A series' objects not yet protected, oldest first (``received``, ``arriving``).
_RECEIVED = (select(instances.c.id, instances.c.path, instances.c.calling_ae, instances.c.sop_token,
                    instances.c.modality, instances.c.sop_class_uid, instances.c.error)
             .where(instances.c.state == "received").order_by(instances.c.id))


@dataclass(frozen=True)
class Incoming:
    """One received object's row."""

    id: int
    path: Path
    calling_ae: str
    sop_token: str
    modality: str
    sop_class_uid: str
    damage: str | None = None  # set when listener.damaged kept a damaged object for quarantine


@dataclass(frozen=True)
class SetAside:
    """A series an administrator has to act on: quarantined, or with objects Orthanc refused."""

    series_token: str
    state: str
    route: str | None
    reason: str | None
    updated_at: float
    objects: int


@dataclass(frozen=True)
class Outgoing:
    """One protected object waiting to be forwarded."""

    id: int
    out_path: Path
    series_token: str
    attempts: int
    sop_token: str = ""  # the original's SOP Instance UID, pseudonymised: corrections share it


@dataclass(frozen=True)
class FileIdentity:
    """A file as it was at one moment (inode, modification time, size): a file rewritten
    since (a new inode: files are replaced by rename) or another file differs."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        return cls._of(path.stat())

    @classmethod
    def read(cls, path: Path) -> tuple[bytes, FileIdentity]:
        """The file's bytes and the identity of the file they were read from."""
        with open(path, "rb") as fh:
            return fh.read(), cls._of(os.fstat(fh.fileno()))

    @classmethod
    def _of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class Arrival:
    """A received object under its spool name; ``durable``: its link and fsyncs, running
    (None for bytes written durably already)."""

    path: Path
    size: int
    durable: Future[None] | None


class LeaseLost(Exception):
    """Another node took over a series this node was protecting (its lease had expired)."""


class Spool:
    """Files under ``root`` and their rows in the state database."""

    def __init__(self, root: Path, intake: bool = True, state: State | None = None) -> None:
        """``intake``: this process receives (the service); an admin command beside a running
        service passes False and leaves the files being received alone. ``state``: the
        database (default: SQLite in ``root``, one node)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._owns_state = state is None
        self.state = state if state is not None else sqlite_state(root / SQLITE_NAME)
        self.node = self.state.node
        self._tag = self.node.encode().hex()  # in the names of the files this node takes in
        self.incoming = root / "incoming"
        self.outbox = root / "outbox"
        self.quarantine_dir = root / "quarantine"
        # Where the listener streams objects while they arrive; same file system as
        # ``incoming``, so taking one in is a hard link, not a copy. One folder per node.
        self.receiving = root / "receiving" / self.node
        # Copies protected while their series still arrives (``gateway.protect_ahead``), this
        # node's own, until the series settles and they become outputs (``adopt``).
        self.ahead = self.outbox / "ahead" / self.node
        for d in (self.incoming, self.outbox, self.quarantine_dir, self.receiving, self.ahead):
            d.mkdir(parents=True, exist_ok=True)
        if intake:
            # A transfer cut off by a crash was never acknowledged; the previous version
            # streamed into ``receiving/`` itself. Copies protected ahead are made again.
            for leftover in [*self.receiving.iterdir(), *self.receiving.parent.iterdir(), *self.ahead.iterdir()]:
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
            self._drop_own_leases()
        self._lease_lock = threading.Lock()
        self._held: set[str] = set()  # series this process is protecting, for the heartbeat
        self._intake = self._intake_statements()
        self._room_lock = threading.Lock()
        self._pending, self._pending_read = 0, 0.0  # for room(): bytes waiting, when last read

    def close(self) -> None:
        if self._owns_state:
            self.state.close()

    def _drop_own_leases(self) -> None:
        """A node that starts holds nothing: leases in its name are from its last run."""
        with self.state.write() as conn:
            for table in (series, instances, deliveries):
                conn.execute(update(table).where(table.c.lease_owner == self.node)
                             .values(lease_owner=None, lease_expires=None))

    # -- intake ---------------------------------------------------------------------

    def room(self) -> int:
        """Free space on the spool's file system beyond what the objects waiting to be
        protected will take for their protected copies (about their own size each).
        Intake that kept only a fixed reserve filled the disk with originals whose copies
        then had no room: nothing was forwarded, so nothing was ever purged. The sum over
        the waiting rows is read at most once a second (every node's, a scan), plus what this
        process took in since: no query per C-STORE."""
        with self._room_lock:
            if time.monotonic() - self._pending_read > 1.0:
                with self.state.read() as conn:
                    self._pending = int(conn.execute(_PENDING_SIZE).scalar_one())
                self._pending_read = time.monotonic()
            pending = self._pending
        return shutil.disk_usage(self.root).free - pending

    def arrive(self, received: Path, calling_ae: str, called_ae: str = "", address: str = "") -> Arrival:
        """Give a file the listener received its name in ``incoming/`` and start making it
        durable in the background (the link, the file's fsync, the folder's fsync) while
        the listener checks the object; ``accept`` or ``turn_away`` finishes it. The
        association's calling and called AE titles and address travel in the name, so
        routes can use them after a power loss too (``origin``), and so does the node."""
        path = self._incoming_path(calling_ae, called_ae, address)
        return Arrival(path, received.stat().st_size, _SYNCS.submit(_adopt_durably, received, path))

    def _incoming_path(self, calling_ae: str, called_ae: str, address: str) -> Path:
        return self.incoming / (f"{self._tag}-{uuid.uuid4().hex}.{calling_ae.encode().hex()}"
                                f".{called_ae.encode().hex()}_{address.encode().hex()}.dcm")

    def accept(self, data: bytes | Arrival, calling_ae: str, series_token: str, sop_token: str,
               modality: str, sop_class_uid: str, damage: str | None = None, called_ae: str = "",
               address: str = "") -> int:
        """Make one received object durable (its bytes, or its ``arrive``d file) and record
        it; only then may the C-STORE say Success. ``damage`` (no values) marks an object
        kept although damaged: its series goes to quarantine, never to Orthanc. The row is
        written while an arrival's fsyncs finish; if they fail, it is taken back."""
        if isinstance(data, bytes):  # (``called_ae``, ``address``: for an arrival, given to ``arrive``)
            path = self._incoming_path(calling_ae, called_ae, address)
            write_durably(path, data)
            arrival = Arrival(path, len(data), None)
        else:
            arrival = data
        try:
            row_id = self._add_row(arrival.path, arrival.size, series_token, sop_token, modality, sop_class_uid,
                                   f"{DAMAGE_NOTE}{damage}" if damage else None)
        except SpoolError:
            self.turn_away(arrival)
            raise
        if arrival.durable is not None:
            try:
                arrival.durable.result()
            except SpoolError:
                # should the database fail too, the row stays: its series then finds the
                # file missing and says so (quarantine), nothing is acknowledged
                with contextlib.suppress(SQLAlchemyError):
                    self._take_back(row_id, series_token)
                raise
        return row_id

    def turn_away(self, arrival: Arrival) -> None:
        """Remove an ``arrive``d object's spool name again: it was refused, or could not be
        recorded."""
        if arrival.durable is not None:
            with contextlib.suppress(SpoolError):
                arrival.durable.result()  # the link exists (or never will) before it goes
        arrival.path.unlink(missing_ok=True)

    def _take_back(self, row_id: int, series_token: str) -> None:
        """An object's row whose file did not become durable; its series' row with it if
        the series holds nothing else."""
        with self.state.write() as conn:
            size = conn.execute(delete(instances).where(instances.c.id == row_id).returning(instances.c.size)).scalar()
            conn.execute(delete(series).where(series.c.series_token == series_token, ~exists().where(
                instances.c.series_token == series_token)))
        with self._room_lock:
            self._pending -= int(size or 0)

    def recover(self, describe: Callable[[Path], tuple[Described, str | None]]) -> int:
        """Give each file of this node in ``incoming/`` that has no row (its commit lost to
        a power failure, or a C-STORE cut short between ``arrive`` and its answer) its row
        back; ``describe`` reads the tokens from the file and checks its structure (a
        damaged one is kept for quarantine, as ``listener.damaged`` would). A file that
        cannot be described goes to ``quarantine/unindexed``. Returns the rows added.
        On a cluster another node's files are its own to recover."""
        with self.state.read() as conn:
            known = set(conn.execute(select(instances.c.path)).scalars())
        added = 0
        for path in sorted(self.incoming.glob("*.dcm"), key=lambda p: p.stat().st_mtime):
            if path.name in known or not self._mine(path.name):
                continue
            try:
                (series_token, sop_token, modality, sop_class_uid), damage = describe(path)
            except Exception:  # noqa: BLE001 - whatever is wrong with it, it must not block the start
                aside = self.quarantine_dir / "unindexed"
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
                continue
            self._add_row(path, path.stat().st_size, series_token, sop_token, modality, sop_class_uid,
                          f"{DAMAGE_NOTE}{damage}" if damage else None)
            added += 1
        return added

    def took_in(self, path: Path) -> bool:
        """Whether this node received the object at ``path`` (always, on one node)."""
        return self._mine(path.name)

    def _mine(self, name: str) -> bool:
        """Whether this node recovers the file: on SQLite (one node, perhaps renamed) every
        file; on a cluster the files whose name carries this node's id."""
        tag, dash, _ = name.partition(".")[0].partition("-")
        return self.state.single_node or (bool(dash) and tag == self._tag)

    def _add_row(self, path: Path, size: int, series_token: str, sop_token: str, modality: str, sop_class_uid: str,
                 error: str | None = None) -> int:
        values = {"path": path.name, "calling_ae": bytes.fromhex(path.name.split(".")[1]).decode(),
                  "series_token": series_token, "sop_token": sop_token, "modality": modality,
                  "sop_class_uid": sop_class_uid, "now": time.time(), "error": error, "size": size}
        try:
            with self.state.write(one_statement=len(self._intake) == 1) as conn:
                row_id = conn.execute(self._intake[0], values).scalar_one()
                for statement in self._intake[1:]:
                    conn.execute(statement, values)
        except SQLAlchemyError as exc:
            raise SpoolError(f"spool index write failed: {_db_text(exc)}") from exc
        with self._room_lock:
            self._pending += size
        return int(row_id)

    def _intake_statements(self) -> list[Executable]:
        """The intake's row and its series' upsert, built once (the hot path: only the values
        change). On PostgreSQL one statement, one round trip: the upsert rides along as a CTE."""
        upsert = self.state.insert(series).values(series_token=bindparam("series_token"), state="receiving",
                                                  last_received=bindparam("now"), updated_at=bindparam("now"))
        upsert = upsert.on_conflict_do_update(index_elements=[series.c.series_token], set_={
            "state": "receiving", "last_received": upsert.excluded.last_received,
            "updated_at": upsert.excluded.updated_at})
        row = instances.insert().values(
            **{name: bindparam(name) for name in ("path", "calling_ae", "series_token", "sop_token", "modality",
                                                  "sop_class_uid", "error", "size")},
            received_at=bindparam("now")).returning(instances.c.id)
        return [row, upsert] if self.state.single_node else [row.add_cte(upsert.cte("touched_series"))]

    # -- settle and protect ------------------------------------------------------------

    def receiving_series(self) -> list[tuple[str, Path, float]]:
        """Series still receiving: (token, the file of one of its objects, last received)."""
        one = (select(instances.c.path).where(instances.c.series_token == series.c.series_token,
                                              instances.c.state == "received").limit(1).scalar_subquery())
        with self.state.read() as conn:
            rows = conn.execute(select(series.c.series_token, one, series.c.last_received)
                                .where(series.c.state == "receiving")).all()
        return [(r[0], self.incoming / r[1], r[2]) for r in rows if r[1]]

    def settled_series(self, settle_seconds: float) -> list[str]:
        """Series that got no new object for ``settle_seconds``."""
        cutoff = time.time() - settle_seconds
        with self.state.read() as conn:
            return list(conn.execute(select(series.c.series_token).where(
                series.c.state == "receiving", series.c.last_received <= cutoff).order_by(series.c.last_received)
            ).scalars())

    def claim_series(self, settle_seconds: float, skip: Iterable[str] = ()) -> str | None:
        """Take the lease of the settled series that waited longest and that no live node
        holds (``skip``: series this node leaves for later); None when there is none. On
        PostgreSQL the candidate row is locked with SKIP LOCKED, so two nodes claiming at
        once take two different series; one statement, one round trip."""
        now = time.time()
        with self._lease_lock, self.state.write(one_statement=True) as conn:
            token = conn.execute(_CLAIM_SERIES, {"cutoff": now - settle_seconds, "now": now, "skip": list(skip),
                                                 "node": self.node, "until": now + self.state.lease_seconds}
                                 ).scalar_one_or_none()
            if token is not None:
                self._held.add(token)
        return token

    def next_settle(self, settle_seconds: float) -> float | None:
        """When the series still receiving will settle (the earliest, as a time.time()),
        if one will later than now; None otherwise."""
        now = time.time()
        with self.state.read() as conn:
            last = conn.execute(select(func.min(series.c.last_received)).where(
                series.c.state == "receiving", series.c.last_received > now - settle_seconds)).scalar()
        return None if last is None else float(last) + settle_seconds

    def release_series(self, series_token: str) -> None:
        """Give up the lease of a series this node claimed (done with it, or leaving it for
        later). Should the write fail, the heartbeat no longer renews it: it expires."""
        with self._lease_lock:
            self._held.discard(series_token)
        with self.state.write(one_statement=True) as conn:
            conn.execute(update(series).where(series.c.series_token == series_token,
                                              series.c.lease_owner == self.node)
                         .values(lease_owner=None, lease_expires=None))

    def renew_leases(self) -> None:
        """The heartbeat: push back the expiry of the series this node is protecting and of
        the forwards and deliveries it claimed."""
        until = time.time() + self.state.lease_seconds
        with self._lease_lock, self.state.write() as conn:
            if self._held:
                conn.execute(update(series).where(series.c.lease_owner == self.node,
                                                  series.c.series_token.in_(sorted(self._held)))
                             .values(lease_expires=until))
            for table in (instances, deliveries):
                conn.execute(update(table).where(table.c.lease_owner == self.node).values(lease_expires=until))

    def received(self, series_token: str) -> list[Incoming]:
        """The series' objects not yet protected, in the order received; a resent
        object (same SOP Instance UID) counts once, the newest copy wins."""
        with self.state.read() as conn:
            rows = conn.execute(_RECEIVED.where(instances.c.series_token == series_token)).all()
        latest = self._latest(rows)
        superseded = [r[0] for r in rows if latest[r[3]].id != r[0]]
        if superseded:
            self._set_state(superseded, "superseded")
        return list(latest.values())

    def paused_series(self, after: float, before: float) -> dict[str, tuple[int, int]]:
        """The series still receiving whose last object came between ``after`` and ``before``
        (time.time()): the rows they have received and the newest row's id, by token."""
        with self.state.read() as conn:
            rows = conn.execute(
                select(series.c.series_token, func.count(instances.c.id), func.max(instances.c.id))
                .join(instances, instances.c.series_token == series.c.series_token)
                .where(series.c.state == "receiving", series.c.last_received > after,
                       series.c.last_received <= before, instances.c.state == "received")
                .group_by(series.c.series_token)).all()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def arriving(self, series_token: str) -> list[Incoming]:
        """The series' objects as ``received`` gives them, without marking what a re-send
        superseded (the series is still arriving: a read only)."""
        with self.state.read() as conn:
            return list(self._latest(conn.execute(_RECEIVED.where(instances.c.series_token == series_token)).all())
                        .values())

    def _latest(self, rows: Sequence[Any]) -> dict[str, Incoming]:
        """The newest row of each SOP Instance UID, in the order received."""
        latest: dict[str, Incoming] = {}
        for r in rows:
            latest.pop(r[3], None)
            latest[r[3]] = Incoming(r[0], self.incoming / r[1], r[2], r[3], r[4], r[5],
                                    r[6] if r[6] and r[6].startswith(DAMAGE_NOTE) else None)
        return latest

    def forced_route(self, series_token: str) -> str | None:
        """The route an administrator named for this series (``gateway quarantine reroute``)."""
        with self.state.read() as conn:
            return conn.execute(select(series.c.forced_route).where(series.c.series_token == series_token)
                                ).scalar_one_or_none()

    def write_output(self, row_id: int, data: bytes) -> None:
        """Store the protected copy of one object durably; it leaves only once its whole
        series is marked ``protected``."""
        write_durably(self.outbox / f"{row_id}.dcm", data)

    def output_path(self, row_id: int) -> Path:
        """Where the protected copy of one object goes (``write_output``, or the protect
        processes themselves, followed by ``outputs_written``)."""
        return self.outbox / f"{row_id}.dcm"

    def ahead_path(self, row_id: int) -> Path:
        """Where the copy of one object protected while its series still arrives waits."""
        return self.ahead / f"{row_id}.dcm"

    def adopt(self, ahead: Path, row_id: int) -> Path:
        """Make a copy protected ahead the object's output (a rename, made durable with the
        batch by ``outputs_written``). Raises SpoolError."""
        try:
            os.replace(ahead, self.output_path(row_id))
        except OSError as exc:
            raise SpoolError(f"spool file rename failed: {exc.strerror}") from exc
        return self.output_path(row_id)

    def outputs_written(self) -> None:
        """Make the names of protected copies written without their folder's fsync durable:
        one fsync for a batch. Raises SpoolError."""
        try:
            _fsync_dir(self.outbox)
        except OSError as exc:
            raise SpoolError(f"spool file write failed: {exc.strerror}") from exc

    def discard_outputs(self, row_ids: list[int]) -> None:
        """Drop protected copies written for a series that ended in quarantine."""
        for row_id in row_ids:
            (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)

    def protected(self, series_token: str, route: str, row_ids: list[int], staged: Sequence[int] = ()) -> None:
        """Mark the series ready to forward, and its copies for further destinations due, in
        one transaction (a node that lost the series' lease records neither); every object's
        copy was written before."""
        with self.state.write() as conn:
            self._hold_series(conn, series_token)
            self._set_rows(conn, row_ids, state="protected", next_attempt=0,
                           out_path=cast(instances.c.id, Text) + ".dcm")
            self._release_deliveries(conn, staged)
            self._finish_series(conn, series_token, "protected", route, None)

    def quarantine(self, series_token: str, route: str | None, reason: str, row_ids: list[int]) -> None:
        """Keep the originals aside (never forwarded) with the reason, for an admin to look at."""
        folder = self.quarantine_dir / series_token
        folder.mkdir(exist_ok=True)
        with self.state.write() as conn:
            self._hold_series(conn, series_token)
            names = {r[0]: r[1] for r in conn.execute(select(instances.c.id, instances.c.path)
                                                      .where(instances.c.id.in_(row_ids)))}
            for row_id in row_ids:
                src = self.incoming / names[row_id]
                if src.exists():
                    os.replace(src, _aside(folder, names[row_id]))
            self._set_rows(conn, row_ids, state="quarantined", error=reason)
            self._finish_series(conn, series_token, "quarantined", route, reason)

    def _hold_series(self, conn: Connection, series_token: str) -> None:
        """Lock the series' row for the rest of the transaction (an object arriving at another
        node meanwhile commits before or after, never in between) and check that no other
        node took its lease over."""
        owner = conn.execute(select(series.c.lease_owner).where(series.c.series_token == series_token)
                             .with_for_update()).scalar_one_or_none()
        if owner not in (None, self.node):
            raise LeaseLost(f"series {series_token}: node {owner} took it over (this node's lease expired)")

    def _finish_series(self, conn: Connection, series_token: str, state: str, route: str | None,
                       reason: str | None) -> None:
        # A series that received more objects meanwhile stays 'receiving' for the next pass.
        more = exists().where(instances.c.series_token == series_token, instances.c.state == "received")
        conn.execute(update(series).where(series.c.series_token == series_token).values(
            state=case((more, "receiving"), else_=state), route=route, reason=reason, updated_at=time.time(),
            lease_owner=None, lease_expires=None))

    # -- forward -------------------------------------------------------------------------

    def _claim_values(self, now: float, limit: int) -> dict[str, object]:
        return {"now": now, "node": self.node, "until": now + self.state.lease_seconds, "limit": limit}

    def due(self, limit: int = 64) -> list[Outgoing]:
        """Claim the protected objects whose next forwarding attempt is due and that no other
        node is uploading, oldest first. Of the copies of one SOP instance (a re-send, a
        correction) only the oldest waiting one is due, so copies never overtake each other,
        on one node or across nodes."""
        now = time.time()
        with self.state.write(one_statement=True) as conn:
            rows = conn.execute(_CLAIM_FORWARDS, self._claim_values(now, limit)).all()
        return [Outgoing(r[0], self.outbox / r[1], r[2], r[3], r[4]) for r in sorted(rows)]

    def forwarded(self, row_id: int) -> None:
        self.forwarded_many([row_id])

    def forwarded_many(self, row_ids: list[int]) -> None:
        """Mark objects forwarded in one transaction (one commit), then drop their copies."""
        if not row_ids:
            return
        with self.state.write(one_statement=len(row_ids) <= _CHUNK) as conn:
            self._set_rows(conn, row_ids, state="forwarded", forwarded_at=time.time(), error=None, lease_owner=None)
        for row_id in row_ids:
            (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)

    def retry_later(self, row_id: int, delay: float, error: str) -> None:
        with self.state.write(one_statement=True) as conn:
            conn.execute(update(instances).where(instances.c.id == row_id).values(
                attempts=instances.c.attempts + 1, next_attempt=time.time() + delay, error=error, lease_owner=None))

    def failed(self, row_id: int, error: str) -> None:
        """Orthanc refused the object for good; it stays in the outbox for an admin."""
        self._set_state([row_id], "failed", error)

    def purge_originals(self, retention_hours: float) -> int:
        """Delete originals forwarded more than ``retention_hours`` ago; returns how many."""
        cutoff = time.time() - retention_hours * 3600
        with self.state.read() as conn:
            rows = conn.execute(select(instances.c.id, instances.c.path).where(
                instances.c.state == "forwarded", instances.c.forwarded_at <= cutoff)).all()
        for _, name in rows:
            (self.incoming / name).unlink(missing_ok=True)
        self._set_state([r[0] for r in rows], "done")
        return len(rows)

    # -- quarantine: what an administrator can do ------------------------------------

    def set_aside(self) -> list[SetAside]:
        """Quarantined series and series with objects Orthanc refused, newest first."""
        aside = and_(instances.c.series_token == series.c.series_token,
                     instances.c.state.in_(("quarantined", "failed")))
        refused = exists().where(instances.c.series_token == series.c.series_token, instances.c.state == "failed")
        with self.state.read() as conn:
            rows = conn.execute(select(series.c.series_token, series.c.state, series.c.route, series.c.reason,
                                       series.c.updated_at,
                                       select(func.count()).where(aside).scalar_subquery())
                                .where(or_(series.c.state == "quarantined", refused))
                                .order_by(series.c.updated_at.desc())).all()
        return [SetAside(*r) for r in rows]

    def series_detail(self, series_token: str) -> tuple[SetAside, list[dict[str, object]]] | None:
        """The series' row and, per object set aside, what the sender was (AE title,
        modality, SOP class, when received) and its state and error; no values."""
        summary = next((s for s in self.set_aside() if s.series_token == series_token), None)
        if summary is None:
            return None
        i = instances.c
        with self.state.read() as conn:
            rows = conn.execute(select(i.sop_token, i.calling_ae, i.modality, i.sop_class_uid, i.received_at, i.state,
                                       i.error)
                                .where(i.series_token == series_token, i.state.in_(("quarantined", "failed")))
                                .order_by(i.id)).all()
        keys = ("object", "sender", "modality", "sop_class_uid", "received_at", "state", "error")
        return summary, [dict(zip(keys, r, strict=True)) for r in rows]

    def release(self, series_token: str, route: str | None) -> int:
        """Put a set-aside series back to be protected again (through ``route`` when given,
        else the route that matches); its originals return to ``incoming/``. Returns the
        objects released."""
        folder = self.quarantine_dir / series_token
        with self.state.write() as conn:
            rows = conn.execute(select(instances.c.id, instances.c.path, instances.c.state, instances.c.error)
                                .where(instances.c.series_token == series_token,
                                       instances.c.state.in_(("quarantined", "failed")))).all()
            for row_id, name, state, error in rows:
                if state == "quarantined" and _aside(folder, name).exists():
                    os.replace(_aside(folder, name), self.incoming / name)
                if state == "failed":
                    (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)
                keep = error if error and error.startswith(DAMAGE_NOTE) else None
                conn.execute(update(instances).where(instances.c.id == row_id).values(
                    state="received", error=keep, attempts=0, out_path=None, lease_owner=None))
            conn.execute(update(series).where(series.c.series_token == series_token).values(
                state="receiving", last_received=0, reason=None, forced_route=route, updated_at=time.time(),
                lease_owner=None, lease_expires=None))
            self._count_action(conn, "release" if route is None else "reroute")
        return len(rows)

    def delete_set_aside(self, series_token: str, action: str = "delete") -> int:
        """Delete a set-aside series' originals (and refused protected copies); the rows
        stay, state 'purged', for the record. Returns the objects deleted."""
        folder = self.quarantine_dir / series_token
        with self.state.read() as conn:
            rows = conn.execute(select(instances.c.id, instances.c.path, instances.c.state)
                                .where(instances.c.series_token == series_token,
                                       instances.c.state.in_(("quarantined", "failed")))).all()
        for row_id, name, state in rows:
            (_aside(folder, name) if state == "quarantined" else self.incoming / name).unlink(missing_ok=True)
            (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
        with self.state.write() as conn:
            self._set_rows(conn, [r[0] for r in rows], state="purged")
            conn.execute(update(series).where(series.c.series_token == series_token,
                                              series.c.state == "quarantined")
                         .values(state="purged", updated_at=time.time()))
            self._count_action(conn, action)
        return len(rows)

    def expired_set_aside(self, retention_days: float) -> list[str]:
        """Set-aside series untouched for longer than ``retention_days``."""
        cutoff = time.time() - retention_days * 86400
        return [s.series_token for s in self.set_aside() if s.updated_at <= cutoff]

    def action_counts(self) -> dict[str, int]:
        """Quarantine actions taken on this spool, by any process, since it was made."""
        with self.state.read() as conn:
            return {r[0]: r[1] for r in conn.execute(select(quarantine_actions.c.action, quarantine_actions.c.count))}

    def _count_action(self, conn: Connection, action: str) -> None:
        count = self.state.insert(quarantine_actions).values(action=action, count=1)
        conn.execute(count.on_conflict_do_update(index_elements=[quarantine_actions.c.action],
                                                 set_={"count": quarantine_actions.c.count + 1}))

    # -- study keys and status -------------------------------------------------------------

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        """The study's data key: created once, reused by every later series of the study.
        Two nodes making the first key of one study at once both insert; the database keeps
        one (ON CONFLICT DO NOTHING) and both use the one it kept. A database that cannot
        write (disk full, locked) is the spool's problem, not the series': SpoolError, which
        the worker retries."""
        query = select(study_keys.c.kek_id, study_keys.c.wrapped).where(study_keys.c.study_uid == study_uid)
        try:
            with self.state.read() as conn:
                row = conn.execute(query).first()
            if row is None:
                key = envelope.new_data_key()
                kek_id, wrapped = envelope.wrap(keyring, key)
                with self.state.write() as conn:
                    conn.execute(self.state.insert(study_keys).values(study_uid=study_uid, kek_id=kek_id,
                                                                      wrapped=wrapped)
                                 .on_conflict_do_nothing(index_elements=[study_keys.c.study_uid]))
                    row = conn.execute(query).one()
                if (row[0], bytes(row[1])) == (kek_id, wrapped):
                    return kek_id, wrapped, key
        except SQLAlchemyError as exc:
            raise SpoolError(f"spool index write failed: {_db_text(exc)}") from exc
        return row[0], bytes(row[1]), envelope.unwrap(keyring, row[0], bytes(row[1]))

    def latest(self, sop_tokens: list[str]) -> dict[str, tuple[str, Incoming]]:
        """Each SOP token's newest row (a re-send supersedes): its state and the row.
        Tokens never received are absent."""
        found: dict[str, tuple[str, Incoming]] = {}
        i = instances.c
        with self.state.read() as conn:
            for start in range(0, len(sop_tokens), 500):
                rows = conn.execute(select(i.sop_token, i.state, i.id, i.path, i.calling_ae, i.modality,
                                           i.sop_class_uid)
                                    .where(i.sop_token.in_(sop_tokens[start:start + 500])).order_by(i.id)).all()
                found.update({r[0]: (r[1], Incoming(r[2], self.incoming / r[3], r[4], r[0], r[5], r[6])) for r in rows})
        return found

    # -- further destinations ------------------------------------------------------------
    # A route's destinations other than the main Orthanc get their own protected copy and
    # their own delivery row; a series' copies are staged until all are written.

    def add_delivery(self, instance_id: int, destination: str, series_token: str, data: bytes) -> int:
        with self.state.write(one_statement=True) as conn:
            key = conn.execute(deliveries.insert().values(instance_id=instance_id, destination=destination,
                                                          series_token=series_token)).inserted_primary_key
        assert key is not None
        delivery_id = int(key[0])
        try:
            write_durably(self.outbox / f"d{delivery_id}.dcm", data)
        except SpoolError:
            self.discard_deliveries([delivery_id])
            raise
        return delivery_id

    def release_deliveries(self, delivery_ids: list[int]) -> None:
        with self.state.write(one_statement=True) as conn:
            self._release_deliveries(conn, delivery_ids)

    @staticmethod
    def _release_deliveries(conn: Connection, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            conn.execute(update(deliveries).where(deliveries.c.id.in_(list(delivery_ids))).values(state="due"))

    def discard_deliveries(self, delivery_ids: list[int]) -> None:
        if delivery_ids:
            with self.state.write(one_statement=True) as conn:
                conn.execute(delete(deliveries).where(deliveries.c.id.in_(delivery_ids)))
        for i in delivery_ids:
            (self.outbox / f"d{i}.dcm").unlink(missing_ok=True)

    def due_deliveries(self, limit: int = 64) -> list[tuple[int, str, str, int, Path]]:
        """(id, destination, series token, attempts, file) of copies whose attempt is due,
        claimed for this node as ``due`` claims forwards."""
        with self.state.write(one_statement=True) as conn:
            rows = conn.execute(_CLAIM_DELIVERIES, self._claim_values(time.time(), limit)).all()
        return [(r[0], r[1], r[2], r[3], self.outbox / f"d{r[0]}.dcm") for r in sorted(rows)]

    def delivered(self, delivery_id: int) -> None:
        self._set_deliveries([delivery_id], state="delivered", delivered_at=time.time(), error=None)
        (self.outbox / f"d{delivery_id}.dcm").unlink(missing_ok=True)

    def delivery_later(self, delivery_id: int, delay: float, error: str) -> None:
        with self.state.write(one_statement=True) as conn:
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                attempts=deliveries.c.attempts + 1, next_attempt=time.time() + delay, error=error, lease_owner=None))

    def delivery_failed(self, delivery_id: int, error: str) -> None:
        """Refused for good; the copy stays in the outbox for an admin."""
        self._set_deliveries([delivery_id], state="failed", error=error)

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """Copies by (destination, state)."""
        d = deliveries.c
        with self.state.read() as conn:
            rows = conn.execute(select(d.destination, d.state, func.count()).group_by(d.destination, d.state)).all()
        return {(r[0], r[1]): r[2] for r in rows}

    def handed_on(self, series_token: str, route: str, row_ids: list[int], staged: Sequence[int] = ()) -> None:
        """A series whose route does not go to the main Orthanc: its copies are in the
        deliveries (due from now on), so the originals are done with as if forwarded
        (retention applies)."""
        with self.state.write() as conn:
            self._hold_series(conn, series_token)
            self._set_rows(conn, row_ids, state="forwarded", forwarded_at=time.time())
            self._release_deliveries(conn, staged)
            self._finish_series(conn, series_token, "protected", route, None)

    def counts(self) -> dict[str, int]:
        with self.state.read() as conn:
            rows = conn.execute(select(instances.c.state, func.count()).group_by(instances.c.state)).all()
        return {state: n for state, n in rows}

    def problem_series(self, limit: int = 20) -> list[tuple[str, str, str | None, float]]:
        """Quarantined or failing series: (token, state, reason, updated_at), newest first."""
        i = instances.c
        first_error = (select(i.error).where(i.series_token == series.c.series_token, i.error.is_not(None))
                       .limit(1).scalar_subquery())
        failing = exists().where(i.series_token == series.c.series_token, i.state.in_(("failed", "protected")),
                                 i.error.is_not(None))
        with self.state.read() as conn:
            rows = conn.execute(select(series.c.series_token, series.c.state,
                                       func.coalesce(series.c.reason, first_error), series.c.updated_at)
                                .where(or_(series.c.state == "quarantined", failing))
                                .order_by(series.c.updated_at.desc()).limit(limit)).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _set_state(self, row_ids: list[int], state: str, error: str | None = None) -> None:
        if not row_ids:
            return
        with self.state.write(one_statement=len(row_ids) <= _CHUNK) as conn:
            values: dict[str, object] = {"state": state, "lease_owner": None}
            if error is not None:
                values["error"] = error
            self._set_rows(conn, row_ids, **values)

    @staticmethod
    def _set_rows(conn: Connection, row_ids: list[int], **values: object) -> None:
        """Set ``values`` on the rows ``row_ids``, in chunks that keep the statement small."""
        for start in range(0, len(row_ids), _CHUNK):
            conn.execute(update(instances).where(instances.c.id.in_(row_ids[start:start + _CHUNK])).values(**values))

    def _set_deliveries(self, delivery_ids: list[int], **values: object) -> None:
        if delivery_ids:
            with self.state.write(one_statement=True) as conn:
                conn.execute(update(deliveries).where(deliveries.c.id.in_(delivery_ids))
                             .values(lease_owner=None, **values))


# Row ids per statement: a series of thousands of objects is updated in a few statements.
_CHUNK = 500


def _claims() -> tuple[Executable, Executable, Executable]:
    """The claims, built once (the workers run them at every poll): a settled series for
    its protection, protected objects for their upload, copies for further destinations.
    Each is one UPDATE of rows its subquery picks and locks (SKIP LOCKED on PostgreSQL)."""
    now: Any = bindparam("now")
    node: Any = bindparam("node")
    lease: dict[str, Any] = {"lease_owner": node, "lease_expires": bindparam("until")}
    settled = (select(series.c.series_token).where(
        series.c.state == "receiving", series.c.last_received <= bindparam("cutoff"),
        or_(series.c.lease_owner.is_(None), series.c.lease_expires < now),
        series.c.series_token.not_in(bindparam("skip", expanding=True)),
    ).order_by(series.c.last_received).limit(1).with_for_update(skip_locked=True))
    i, earlier, d = instances.c, instances.alias("earlier"), deliveries.c
    forwards = (select(i.id).where(
        i.state == "protected", i.next_attempt <= now,
        or_(i.lease_owner.is_(None), i.lease_expires < now, i.lease_owner == node),  # own: left over from a pass
        ~exists().where(earlier.c.sop_token == i.sop_token, earlier.c.state == "protected", earlier.c.id < i.id),
    ).order_by(i.id).limit(bindparam("limit")).with_for_update(skip_locked=True))
    copies = (select(d.id).where(d.state == "due", d.next_attempt <= now,
                                 or_(d.lease_owner.is_(None), d.lease_expires < now, d.lease_owner == node))
              .order_by(d.id).limit(bindparam("limit")).with_for_update(skip_locked=True))
    return (update(series).where(series.c.series_token == settled.scalar_subquery()).values(**lease)
            .returning(series.c.series_token),
            update(instances).where(i.id.in_(forwards)).values(**lease)
            .returning(i.id, i.out_path, i.series_token, i.attempts, i.sop_token),
            update(deliveries).where(d.id.in_(copies)).values(**lease)
            .returning(d.id, d.destination, d.series_token, d.attempts))


_CLAIM_SERIES, _CLAIM_FORWARDS, _CLAIM_DELIVERIES = _claims()
# What the objects waiting to be protected take (``room``, at every C-STORE).
_PENDING_SIZE = select(func.coalesce(func.sum(instances.c.size), 0)).where(instances.c.state == "received")


def _aside(folder: Path, name: str) -> Path:
    """Where a received file waits in a series' quarantine folder."""
    return folder / PurePath(name).name


def _db_text(exc: SQLAlchemyError) -> str:
    """The database's own message, without the statement and its parameters."""
    return str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _adopt_durably(src: Path, path: Path) -> None:
    """Give the file ``src`` a durable second name ``path``, without reading it into memory.
    The link comes before the file's fsync: on a journaling file system (ext4, XFS) that
    fsync then commits the new name too, and the folder's fsync after it, which POSIX
    needs for the name, finds nothing left to write (one journal commit, not two)."""
    try:
        try:
            os.link(src, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_durably(src, path)
        else:
            _fsync_file(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise SpoolError(f"spool file write failed: {exc.strerror}") from exc


def _copy_durably(src: Path, path: Path) -> None:
    tmp = path.with_suffix(".part")
    shutil.copyfile(src, tmp)
    _fsync_file(tmp)
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    """Make the names added to ``folder`` so far durable. Concurrent callers share one
    fsync (a group commit): each waits for an fsync that started after its call, so eight
    senders at once do not queue eight folder fsyncs one behind the other."""
    with _FOLDER_SYNCS_LOCK:
        sync = _FOLDER_SYNCS.setdefault(str(folder), _FolderSync(folder))
    sync.sync()


class _FolderSync:
    """Group commit of one folder's fsync."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cond = threading.Condition()
        self._started = 0  # fsyncs begun
        self._finished = 0  # fsyncs ended (successfully or not)
        self._running = False
        self._failed: dict[int, OSError] = {}

    def sync(self) -> None:
        with self._cond:
            wanted = self._started + 1  # the next one to start began after this call
            while self._finished < wanted:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._cond.release()
                error: OSError | None = None
                try:
                    _fsync_path(self.folder)
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._finished = number
                    if error is not None:
                        self._failed[number] = error
                    self._cond.notify_all()
            failed = next((e for n, e in self._failed.items() if n >= wanted), None)
            self._failed = {n: e for n, e in self._failed.items() if n > self._finished - 64}
        if failed is not None:
            raise failed


def _fsync_path(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_FOLDER_SYNCS: dict[str, _FolderSync] = {}
_FOLDER_SYNCS_LOCK = threading.Lock()
# Received files made durable in the background (Spool.arrive): one per association at a time, as a rule.
_SYNCS = ThreadPoolExecutor(8, thread_name_prefix="fsync")


def write_durably(path: Path, data: bytes, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` so that it survives a power cut: a temporary file, fsynced,
    renamed, the folder fsynced (``sync_folder`` False: the caller fsyncs it once for many
    files). Raises SpoolError."""
    tmp = path.with_suffix(".part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync_folder:
            _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise SpoolError(f"spool file write failed: {exc.strerror}") from exc
