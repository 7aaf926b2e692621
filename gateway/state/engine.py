"""Opening the state database: SQLite in the spool folder, or the cluster's PostgreSQL.

SQLite keeps what the spool always had: WAL, synchronous=NORMAL (the spool's files are its
durable record, ``Spool.recover``), set on every new connection. Writes begin IMMEDIATE,
so a transaction that reads then writes never meets a lock it cannot wait for, and the
threads of one process queue on a lock rather than in SQLite's sleeping busy handler.
PostgreSQL runs its default READ COMMITTED; the spool locks the rows it must (series
leases, ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite

from gateway.config import Config

SQLITE_NAME = "spool.sqlite3"


class StateError(Exception):
    """The state database cannot be used as it is (an older schema, unreachable)."""


class State:
    """The engine of the state database and who this process is among the nodes."""

    def __init__(self, engine: Engine, node: str, lease_seconds: float = 30.0) -> None:
        self.engine = engine
        self.node = node
        self.lease_seconds = lease_seconds
        self.single_node = engine.dialect.name == "sqlite"
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        # Reads run in autocommit (each SELECT its own snapshot): on PostgreSQL no BEGIN and
        # ROLLBACK round trips around a SELECT, on SQLite no BEGIN statement.
        self._reader = (engine.execution_options(sqlite_begin="") if self.single_node
                        else engine.execution_options(isolation_level="AUTOCOMMIT"))
        self._write_lock = threading.Lock() if self.single_node else contextlib.nullcontext()
        # SQLite has one writer at a time anyway: it keeps one connection for writing, as the
        # spool always did, and spares each write a checkout from the pool.
        self._write_conn: Connection | None = None

    @contextlib.contextmanager
    def write(self, one_statement: bool = False) -> Iterator[Connection]:
        """One write transaction, committed when the block ends without an exception.
        ``one_statement``: the block runs a single statement, which is a transaction of its
        own: on PostgreSQL it then runs in autocommit, without the BEGIN and COMMIT round trips."""
        if one_statement and not self.single_node:
            with self._reader.connect() as conn:
                yield conn
            return
        if not self.single_node:
            with self._writer.begin() as conn:
                yield conn
            return
        with self._write_lock:
            if self._write_conn is None or self._write_conn.invalidated or self._write_conn.closed:
                self._write_conn = self._writer.connect()
            with self._write_conn.begin():
                yield self._write_conn

    def read(self) -> Connection:
        """A connection for reading (``with state.read() as conn``)."""
        return self._reader.connect()

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_update`` / ``_do_nothing``."""
        return (sqlite.insert if self.single_node else postgresql.insert)(table)

    def describe(self) -> str:
        """The database without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        with self._write_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None
        self.engine.dispose()


def sqlite_engine(path: Path) -> Engine:
    # As many connections as PostgreSQL's pool: associations, jobs and upload threads read at once.
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=8, max_overflow=24, pool_reset_on_return=None)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the begin listener below opens transactions
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode:  # on the driver's connection: SQLAlchemy's statement machinery is not needed here
            conn.connection.driver_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]

    return engine


def postgres_engine(url: str) -> Engine:
    # The listener's associations and the worker's jobs each hold a connection briefly. No
    # pre-ping (a round trip per checkout): a connection PostgreSQL dropped fails its
    # statement once, SQLAlchemy discards the pool's connections, and the caller's retry
    # (the modality's, the worker's backoff) gets a fresh one. No reset on return: every
    # connection leaves a block committed, rolled back (SQLAlchemy's own) or in autocommit.
    return create_engine(url, pool_size=8, max_overflow=24, pool_reset_on_return=None)


def sqlite_state(path: Path, node: str = "local", lease_seconds: float = 30.0) -> State:
    """A migrated SQLite state in the file ``path`` (a single node applies its own migrations)."""
    from gateway.state.migrate import upgrade

    state = State(sqlite_engine(path), node, lease_seconds)
    upgrade(state)
    return state


def open_state(config: Config, migrate: bool = True) -> State:
    """The state database ``config`` names. SQLite (``state.url`` empty) is brought to the
    current schema at once when ``migrate``; PostgreSQL is shared by every node and only
    ``gateway db upgrade`` changes its schema, so an older one stops the start (StateError)."""
    from gateway.state.migrate import check_current, upgrade

    settings = config.state
    if not settings.url:
        config.spool.path.mkdir(parents=True, exist_ok=True)
        state = State(sqlite_engine(config.spool.path / SQLITE_NAME), settings.node, settings.lease_seconds)
        if migrate:
            upgrade(state)
        return state
    state = State(postgres_engine(settings.url), settings.node, settings.lease_seconds)
    if migrate:
        try:
            check_current(state)
        except StateError:
            state.close()
            raise
    return state
