"""Versioned schema migrations (alembic, ``migrations/versions``), run in-process.

``gateway db upgrade`` applies them; a single node on SQLite applies them itself at start,
and a node on PostgreSQL refuses to start on an older schema (``check_current``): the
cluster's schema changes once, by an operator, not by whichever node starts first.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.state.engine import State, StateError

MIGRATIONS = Path(__file__).with_name("migrations")
# Serialises ``db upgrade`` run on two PostgreSQL nodes at once (any constant will do).
_UPGRADE_LOCK = 0x67617465


def _alembic() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def head() -> str:
    """The newest schema revision this gateway knows."""
    revision = ScriptDirectory.from_config(_alembic()).get_current_head()
    assert revision is not None
    return revision


def current(state: State) -> str | None:
    """The database's schema revision; None for an empty database or a spool made before
    versioned migrations. StateError when it cannot be reached."""
    try:
        with state.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except (OperationalError, InterfaceError) as exc:
        reason = str(exc.orig or type(exc).__name__).strip().splitlines()[0]
        raise StateError(f"the state database {state.describe()} is not reachable ({reason}): check state.url "
                         "and the password file (PGPASSFILE)") from None


def upgrade(state: State) -> tuple[str | None, str]:
    """Bring the database to ``head``; returns (revision before, revision after)."""
    before = current(state)
    if before == head():
        return before, before
    cfg = _alembic()
    with state.write() as conn:
        if not state.single_node:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head()


def check_current(state: State) -> None:
    """StateError unless the database is at this gateway's schema revision."""
    found = current(state)
    if found != head():
        raise StateError(f"the state database {state.describe()} is at schema revision {found or 'none'}, this "
                         f"gateway needs {head()}: run 'gateway db upgrade --config ...' once (stop the nodes of an "
                         "older version first), then start the nodes")
