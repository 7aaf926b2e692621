"""The durable spool: received originals, protected copies, and their states.

A C-STORE is acknowledged only after ``accept`` returns: the object's bytes are in a file
in ``incoming/`` (fsynced, its folder fsynced: the file is the durable record, its name
carries the calling AE title) and its row is committed to SQLite. The database runs WAL
with synchronous=NORMAL, which survives any crash of the process (kill -9 included);
after a power loss the last commits may be gone, so at start ``recover`` gives every
file in ``incoming/`` without a row its row back, from the file itself. Two fsyncs per
object instead of three, the same durability.

Rows carry pseudonymous tokens (the protected UIDs), never identity, so ``gateway
status`` and logs can name objects safely. This module is the one to swap for a shared
broker and object store when the gateway runs on several nodes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway import envelope
from gateway.keyring import Keyring

# Every state an object of the spool can be in, in the order it moves through them.
SPOOL_STATES = ("received", "protected", "forwarded", "done", "quarantined", "failed", "superseded", "purged")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    series_token TEXT NOT NULL,
    sop_token TEXT NOT NULL,
    modality TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'received',
    out_path TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    forwarded_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS instances_state ON instances(state, series_token);
CREATE TABLE IF NOT EXISTS series (
    series_token TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_received REAL NOT NULL,
    route TEXT,
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine_actions (
    action TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    series_token TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'staged',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    delivered_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, next_attempt);
CREATE TABLE IF NOT EXISTS study_keys (
    study_uid TEXT PRIMARY KEY,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL
);
"""


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


class Spool:
    """Files under ``root`` and their index in ``root/spool.sqlite3``."""

    def __init__(self, root: Path, intake: bool = True) -> None:
        """``intake``: this process receives (the service); an admin command beside a running
        service passes False and leaves the files being received alone."""
        self.root = root
        self.incoming = root / "incoming"
        self.outbox = root / "outbox"
        self.quarantine_dir = root / "quarantine"
        # Where the listener streams objects while they arrive; same file system as
        # ``incoming``, so taking one in is a hard link, not a copy.
        self.receiving = root / "receiving"
        for d in (self.incoming, self.outbox, self.quarantine_dir, self.receiving):
            d.mkdir(parents=True, exist_ok=True)
        if intake:
            for leftover in self.receiving.iterdir():  # a transfer cut off by a crash: never acknowledged
                leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "spool.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # the files are the durable record; see recover()
        self._db.executescript(SCHEMA)
        # Columns added after spools were first made.
        if "forced_route" not in {r[1] for r in self._db.execute("PRAGMA table_info(series)")}:
            self._db.execute("ALTER TABLE series ADD COLUMN forced_route TEXT")
        if "size" not in {r[1] for r in self._db.execute("PRAGMA table_info(instances)")}:
            self._db.execute("ALTER TABLE instances ADD COLUMN size INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- intake ---------------------------------------------------------------------

    def room(self) -> int:
        """Free space on the spool's file system beyond what the objects waiting to be
        protected will take for their protected copies (about their own size each).
        Intake that kept only a fixed reserve filled the disk with originals whose copies
        then had no room: nothing was forwarded, so nothing was ever purged."""
        with self._lock:
            (pending,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM instances WHERE state='received'"
                                          ).fetchone()
        return shutil.disk_usage(self.root).free - int(pending)

    def accept(self, data: bytes | Path, calling_ae: str, series_token: str, sop_token: str,
               modality: str, sop_class_uid: str, damage: str | None = None, called_ae: str = "",
               address: str = "", synced: Future[None] | None = None) -> int:
        """Make one received object durable (its bytes, or the file it was streamed to);
        only then may the C-STORE say Success. ``damage`` (no values) marks an object kept
        although damaged: its series goes to quarantine, never to Orthanc. The association's
        calling and called AE titles and address travel in the file's name, so routes can use
        them after a power loss too (``origin``). ``synced``: the file's fsync, started by
        ``sync_soon`` while the caller checked the object."""
        path = self.incoming / (f"{uuid.uuid4().hex}.{calling_ae.encode().hex()}"
                                f".{called_ae.encode().hex()}_{address.encode().hex()}.dcm")
        if isinstance(data, Path):
            _adopt_durably(data, path, synced)
        else:
            write_durably(path, data)
        try:
            return self._add_row(path, series_token, sop_token, modality, sop_class_uid,
                                 f"{DAMAGE_NOTE}{damage}" if damage else None)
        except SpoolError:
            path.unlink(missing_ok=True)
            raise

    def recover(self, describe: Callable[[Path], Described]) -> int:
        """Give each file in ``incoming/`` that has no row (its commit lost to a power
        failure) its row back; ``describe`` reads the tokens from the file. A file that
        cannot be described goes to ``quarantine/unindexed``. Returns the rows added."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT path FROM instances")}
        added = 0
        for path in sorted(self.incoming.glob("*.dcm"), key=lambda p: p.stat().st_mtime):
            if path.name in known:
                continue
            try:
                series_token, sop_token, modality, sop_class_uid = describe(path)
            except Exception:  # noqa: BLE001 - whatever is wrong with it, it must not block the start
                aside = self.quarantine_dir / "unindexed"
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
                continue
            self._add_row(path, series_token, sop_token, modality, sop_class_uid)
            added += 1
        return added

    def _add_row(self, path: Path, series_token: str, sop_token: str, modality: str, sop_class_uid: str,
                 error: str | None = None) -> int:
        calling_ae = bytes.fromhex(path.name.split(".")[1]).decode()
        size = path.stat().st_size
        now = time.time()
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO instances (path, calling_ae, series_token, sop_token, modality, sop_class_uid,"
                    " received_at, error, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (path.name, calling_ae, series_token, sop_token, modality, sop_class_uid, now, error, size),
                )
                self._db.execute(
                    "INSERT INTO series (series_token, state, last_received, updated_at) VALUES (?, 'receiving', ?, ?)"
                    " ON CONFLICT(series_token) DO UPDATE SET state='receiving', last_received=excluded.last_received,"
                    " updated_at=excluded.updated_at",
                    (series_token, now, now),
                )
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise SpoolError(f"spool index write failed: {exc}") from exc
        return int(cur.lastrowid or 0)

    # -- settle and protect ------------------------------------------------------------

    def receiving_series(self) -> list[tuple[str, Path, float]]:
        """Series still receiving: (token, the file of one of its objects, last received)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_token, (SELECT path FROM instances i WHERE i.series_token=s.series_token"
                " AND i.state='received' LIMIT 1), s.last_received FROM series s WHERE s.state='receiving'").fetchall()
        return [(r[0], self.incoming / r[1], r[2]) for r in rows if r[1]]

    def settled_series(self, settle_seconds: float) -> list[str]:
        """Series that got no new object for ``settle_seconds``."""
        cutoff = time.time() - settle_seconds
        with self._lock:
            rows = self._db.execute(
                "SELECT series_token FROM series WHERE state='receiving' AND last_received <= ? ORDER BY last_received",
                (cutoff,),
            ).fetchall()
        return [r[0] for r in rows]

    def received(self, series_token: str) -> list[Incoming]:
        """The series' objects not yet protected, in the order received; a resent
        object (same SOP Instance UID) counts once, the newest copy wins."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path, calling_ae, sop_token, modality, sop_class_uid, error FROM instances"
                " WHERE series_token=? AND state='received' ORDER BY id",
                (series_token,),
            ).fetchall()
        latest: dict[str, Incoming] = {}
        for r in rows:
            latest.pop(r[3], None)
            latest[r[3]] = Incoming(r[0], self.incoming / r[1], r[2], r[3], r[4], r[5],
                                    r[6] if r[6] and r[6].startswith(DAMAGE_NOTE) else None)
        superseded = [r[0] for r in rows if latest[r[3]].id != r[0]]
        if superseded:
            self._set_state(superseded, "superseded")
        return list(latest.values())

    def forced_route(self, series_token: str) -> str | None:
        """The route an administrator named for this series (``gateway quarantine reroute``)."""
        with self._lock:
            row = self._db.execute("SELECT forced_route FROM series WHERE series_token=?", (series_token,)).fetchone()
        return row[0] if row else None

    def write_output(self, row_id: int, data: bytes) -> None:
        """Store the protected copy of one object durably; it leaves only once its whole
        series is marked ``protected``."""
        write_durably(self.outbox / f"{row_id}.dcm", data)

    def output_path(self, row_id: int) -> Path:
        """Where the protected copy of one object goes (``write_output``, or the protect
        processes themselves, followed by ``outputs_written``)."""
        return self.outbox / f"{row_id}.dcm"

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

    def protected(self, series_token: str, route: str, row_ids: list[int]) -> None:
        """Mark the series ready to forward; every object's copy was written before."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE instances SET state='protected', out_path=?, next_attempt=0 WHERE id=?",
                [(f"{row_id}.dcm", row_id) for row_id in row_ids],
            )
            self._finish_series(series_token, "protected", route, None)
            self._db.execute("COMMIT")

    def quarantine(self, series_token: str, route: str | None, reason: str, row_ids: list[int]) -> None:
        """Keep the originals aside (never forwarded) with the reason, for an admin to look at."""
        folder = self.quarantine_dir / series_token
        folder.mkdir(exist_ok=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for row_id in row_ids:
                (name,) = self._db.execute("SELECT path FROM instances WHERE id=?", (row_id,)).fetchone()
                src = self.incoming / name
                if src.exists():
                    os.replace(src, folder / name)
                self._db.execute(
                    "UPDATE instances SET state='quarantined', error=? WHERE id=?", (reason, row_id)
                )
            self._finish_series(series_token, "quarantined", route, reason)
            self._db.execute("COMMIT")

    def _finish_series(self, series_token: str, state: str, route: str | None, reason: str | None) -> None:
        # A series that received more objects meanwhile stays 'receiving' for the next pass.
        self._db.execute(
            "UPDATE series SET state=CASE WHEN EXISTS (SELECT 1 FROM instances WHERE series_token=?"
            " AND state='received') THEN 'receiving' ELSE ? END, route=?, reason=?, updated_at=? WHERE series_token=?",
            (series_token, state, route, reason, time.time(), series_token),
        )

    # -- forward -------------------------------------------------------------------------

    def due(self, limit: int = 64) -> list[Outgoing]:
        """Protected objects whose next forwarding attempt is due."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, out_path, series_token, attempts, sop_token FROM instances"
                " WHERE state='protected' AND next_attempt <= ? ORDER BY id LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [Outgoing(r[0], self.outbox / r[1], r[2], r[3], r[4]) for r in rows]

    def forwarded(self, row_id: int) -> None:
        self.forwarded_many([row_id])

    def forwarded_many(self, row_ids: list[int]) -> None:
        """Mark objects forwarded in one transaction (one commit), then drop their copies."""
        if not row_ids:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE instances SET state='forwarded', forwarded_at=?, error=NULL WHERE id=?",
                                     [(now, row_id) for row_id in row_ids])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        for row_id in row_ids:
            (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)

    def retry_later(self, row_id: int, delay: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE instances SET attempts=attempts+1, next_attempt=?, error=? WHERE id=?",
                (time.time() + delay, error, row_id),
            )

    def failed(self, row_id: int, error: str) -> None:
        """Orthanc refused the object for good; it stays in the outbox for an admin."""
        self._set_state([row_id], "failed", error)

    def purge_originals(self, retention_hours: float) -> int:
        """Delete originals forwarded more than ``retention_hours`` ago; returns how many."""
        cutoff = time.time() - retention_hours * 3600
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path FROM instances i WHERE state='forwarded' AND forwarded_at <= ?", (cutoff,)
            ).fetchall()
        for _, name in rows:
            (self.incoming / name).unlink(missing_ok=True)
        self._set_state([r[0] for r in rows], "done")
        return len(rows)

    # -- quarantine: what an administrator can do ------------------------------------

    def set_aside(self) -> list[SetAside]:
        """Quarantined series and series with objects Orthanc refused, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_token, s.state, s.route, s.reason, s.updated_at,"
                " (SELECT COUNT(*) FROM instances i WHERE i.series_token=s.series_token"
                "  AND i.state IN ('quarantined', 'failed')) FROM series s"
                " WHERE s.state='quarantined' OR EXISTS (SELECT 1 FROM instances i WHERE"
                " i.series_token=s.series_token AND i.state='failed') ORDER BY s.updated_at DESC"
            ).fetchall()
        return [SetAside(*r) for r in rows]

    def series_detail(self, series_token: str) -> tuple[SetAside, list[dict[str, object]]] | None:
        """The series' row and, per object set aside, what the sender was (AE title,
        modality, SOP class, when received) and its state and error; no values."""
        summary = next((s for s in self.set_aside() if s.series_token == series_token), None)
        if summary is None:
            return None
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_token, calling_ae, modality, sop_class_uid, received_at, state, error FROM instances"
                " WHERE series_token=? AND state IN ('quarantined', 'failed') ORDER BY id", (series_token,)
            ).fetchall()
        keys = ("object", "sender", "modality", "sop_class_uid", "received_at", "state", "error")
        return summary, [dict(zip(keys, r, strict=True)) for r in rows]

    def release(self, series_token: str, route: str | None) -> int:
        """Put a set-aside series back to be protected again (through ``route`` when given,
        else the route that matches); its originals return to ``incoming/``. Returns the
        objects released."""
        folder = self.quarantine_dir / series_token
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, path, state, error FROM instances WHERE series_token=? AND state IN"
                    " ('quarantined', 'failed')", (series_token,)).fetchall()
                for row_id, name, state, error in rows:
                    if state == "quarantined" and (folder / name).exists():
                        os.replace(folder / name, self.incoming / name)
                    if state == "failed":
                        (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)
                    keep = error if error and error.startswith(DAMAGE_NOTE) else None
                    self._db.execute("UPDATE instances SET state='received', error=?, attempts=0, out_path=NULL"
                                     " WHERE id=?", (keep, row_id))
                self._db.execute(
                    "UPDATE series SET state='receiving', last_received=0, reason=NULL, forced_route=?, updated_at=?"
                    " WHERE series_token=?", (route, time.time(), series_token))
                self._count_action("release" if route is None else "reroute")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def delete_set_aside(self, series_token: str, action: str = "delete") -> int:
        """Delete a set-aside series' originals (and refused protected copies); the rows
        stay, state 'purged', for the record. Returns the objects deleted."""
        folder = self.quarantine_dir / series_token
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path, state FROM instances WHERE series_token=? AND state IN ('quarantined', 'failed')",
                (series_token,)).fetchall()
        for row_id, name, state in rows:
            ((folder if state == "quarantined" else self.incoming) / name).unlink(missing_ok=True)
            (self.outbox / f"{row_id}.dcm").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE instances SET state='purged' WHERE id=?", [(r[0],) for r in rows])
            self._db.execute("UPDATE series SET state='purged', updated_at=? WHERE series_token=? AND"
                             " state='quarantined'", (time.time(), series_token))
            self._count_action(action)
            self._db.execute("COMMIT")
        return len(rows)

    def expired_set_aside(self, retention_days: float) -> list[str]:
        """Set-aside series untouched for longer than ``retention_days``."""
        cutoff = time.time() - retention_days * 86400
        return [s.series_token for s in self.set_aside() if s.updated_at <= cutoff]

    def action_counts(self) -> dict[str, int]:
        """Quarantine actions taken on this spool, by any process, since it was made."""
        with self._lock:
            return dict(self._db.execute("SELECT action, count FROM quarantine_actions").fetchall())

    def _count_action(self, action: str) -> None:
        self._db.execute("INSERT INTO quarantine_actions (action, count) VALUES (?, 1)"
                         " ON CONFLICT(action) DO UPDATE SET count=count+1", (action,))

    # -- study keys and status -------------------------------------------------------------

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        """The study's data key: created once, reused by every later series of the study.
        A database that cannot write (disk full, locked) is the spool's problem, not the
        series': SpoolError, which the worker retries."""
        with self._lock:
            try:
                row = self._db.execute("SELECT kek_id, wrapped FROM study_keys WHERE study_uid=?",
                                       (study_uid,)).fetchone()
                if row is None:
                    key = envelope.new_data_key()
                    kek_id, wrapped = envelope.wrap(keyring, key)
                    self._db.execute("INSERT INTO study_keys (study_uid, kek_id, wrapped) VALUES (?, ?, ?)",
                                     (study_uid, kek_id, wrapped))
                    return kek_id, wrapped, key
            except sqlite3.Error as exc:
                raise SpoolError(f"spool index write failed: {exc}") from exc
        return row[0], row[1], envelope.unwrap(keyring, row[0], row[1])

    def latest(self, sop_tokens: list[str]) -> dict[str, tuple[str, Incoming]]:
        """Each SOP token's newest row (a re-send supersedes): its state and the row.
        Tokens never received are absent."""
        found: dict[str, tuple[str, Incoming]] = {}
        with self._lock:
            for start in range(0, len(sop_tokens), 500):
                chunk = sop_tokens[start:start + 500]
                rows = self._db.execute(
                    "SELECT sop_token, state, id, path, calling_ae, modality, sop_class_uid FROM instances WHERE"
                    f" sop_token IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk).fetchall()
                found.update({r[0]: (r[1], Incoming(r[2], self.incoming / r[3], r[4], r[0], r[5], r[6])) for r in rows})
        return found

    # -- further destinations ------------------------------------------------------------
    # A route's destinations other than the main Orthanc get their own protected copy and
    # their own delivery row; a series' copies are staged until all are written.

    def add_delivery(self, instance_id: int, destination: str, series_token: str, data: bytes) -> int:
        with self._lock:
            cur = self._db.execute("INSERT INTO deliveries (instance_id, destination, series_token) VALUES (?, ?, ?)",
                                   (instance_id, destination, series_token))
        delivery_id = int(cur.lastrowid or 0)
        try:
            write_durably(self.outbox / f"d{delivery_id}.dcm", data)
        except SpoolError:
            self.discard_deliveries([delivery_id])
            raise
        return delivery_id

    def release_deliveries(self, delivery_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("UPDATE deliveries SET state='due' WHERE id=?", [(i,) for i in delivery_ids])

    def discard_deliveries(self, delivery_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM deliveries WHERE id=?", [(i,) for i in delivery_ids])
        for i in delivery_ids:
            (self.outbox / f"d{i}.dcm").unlink(missing_ok=True)

    def due_deliveries(self, limit: int = 64) -> list[tuple[int, str, str, int, Path]]:
        """(id, destination, series token, attempts, file) of copies whose attempt is due."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, destination, series_token, attempts FROM deliveries WHERE state='due' AND next_attempt <= ?"
                " ORDER BY id LIMIT ?", (time.time(), limit)).fetchall()
        return [(r[0], r[1], r[2], r[3], self.outbox / f"d{r[0]}.dcm") for r in rows]

    def delivered(self, delivery_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET state='delivered', delivered_at=?, error=NULL WHERE id=?",
                             (time.time(), delivery_id))
        (self.outbox / f"d{delivery_id}.dcm").unlink(missing_ok=True)

    def delivery_later(self, delivery_id: int, delay: float, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET attempts=attempts+1, next_attempt=?, error=? WHERE id=?",
                             (time.time() + delay, error, delivery_id))

    def delivery_failed(self, delivery_id: int, error: str) -> None:
        """Refused for good; the copy stays in the outbox for an admin."""
        with self._lock:
            self._db.execute("UPDATE deliveries SET state='failed', error=? WHERE id=?", (error, delivery_id))

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """Copies by (destination, state)."""
        with self._lock:
            rows = self._db.execute("SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state")
            return {(r[0], r[1]): r[2] for r in rows.fetchall()}

    def handed_on(self, series_token: str, route: str, row_ids: list[int]) -> None:
        """A series whose route does not go to the main Orthanc: its copies are in the
        deliveries, so the originals are done with as if forwarded (retention applies)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE instances SET state='forwarded', forwarded_at=? WHERE id=?",
                                 [(now, i) for i in row_ids])
            self._finish_series(series_token, "protected", route, None)
            self._db.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def problem_series(self, limit: int = 20) -> list[tuple[str, str, str | None, float]]:
        """Quarantined or failing series: (token, state, reason, updated_at), newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_token, s.state, COALESCE(s.reason, (SELECT error FROM instances i WHERE"
                " i.series_token=s.series_token AND i.error IS NOT NULL LIMIT 1)), s.updated_at FROM series s"
                " WHERE s.state='quarantined' OR EXISTS (SELECT 1 FROM instances i WHERE"
                " i.series_token=s.series_token AND i.state IN ('failed', 'protected') AND i.error IS NOT NULL)"
                " ORDER BY s.updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _set_state(self, row_ids: list[int], state: str, error: str | None = None) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE instances SET state=?, error=COALESCE(?, error) WHERE id=?",
                [(state, error, i) for i in row_ids],
            )

    def _rollback(self) -> None:
        try:
            with self._lock:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def sync_soon(path: Path) -> Future[None]:
    """Start the fsync of a received file now, in the background: the listener checks the
    object meanwhile (header, structure, room), and ``accept`` then waits for what is left
    of it instead of starting it (measured: the fsync of a 526 KB object takes 1-3 ms here,
    the checks about 1 ms)."""
    return _SYNCS.submit(_fsync_file, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _adopt_durably(src: Path, path: Path, synced: Future[None] | None = None) -> None:
    """Give the file ``src`` a durable second name ``path``, without reading it into memory."""
    try:
        if synced is not None:
            synced.result()
        else:
            _fsync_file(src)
        try:
            os.link(src, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_durably(src, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise SpoolError(f"spool file write failed: {exc.strerror}") from exc


def _copy_durably(src: Path, path: Path) -> None:
    tmp = path.with_suffix(".part")
    shutil.copyfile(src, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
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
# Background fsyncs of received files (sync_soon): one per association at a time, as a rule.
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
