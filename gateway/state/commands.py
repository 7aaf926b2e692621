"""``gateway db upgrade|current``: the state database's schema, for the operator.

A cluster's nodes never change the PostgreSQL schema themselves: the operator runs
``gateway db upgrade`` once per release, before starting the nodes of the new version.
A single node on SQLite needs neither: ``serve`` brings its own file up to date.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config, load_config
from gateway.state.engine import StateError, open_state
from gateway.state.migrate import current, head, upgrade

if TYPE_CHECKING:
    from gateway.cli import Subparsers


def add_commands(sub: Subparsers) -> None:
    db = sub.add_parser("db", help="the state database's schema (SQLite spool or PostgreSQL)")
    actions = db.add_subparsers(required=True, metavar="ACTION")
    for name, fn, text in (("upgrade", _upgrade, "apply the schema migrations this version brings"),
                           ("current", _current, "print the schema revision of the database and of this version")):
        s = actions.add_parser(name, help=text)
        s.add_argument("--config", required=True, type=Path)
        s.set_defaults(func=fn)


def state_warning(config: Config) -> str | None:
    """For ``check-config``: why a cluster node could not start on its state database (not
    reachable, an older schema); None where it could, and always for SQLite (made at start)."""
    if not config.state.url:
        return None
    try:
        open_state(config).close()
    except StateError as exc:
        return str(exc)
    return None


def _upgrade(args: argparse.Namespace) -> int:
    state = open_state(load_config(args.config), migrate=False)
    try:
        before, after = upgrade(state)
    finally:
        state.close()
    where = state.describe()
    print(f"{where}: at revision {after}" + (f" (was {before or 'none'})" if before != after else ", nothing to do"))
    return 0


def _current(args: argparse.Namespace) -> int:
    state = open_state(load_config(args.config), migrate=False)
    try:
        found = current(state)
    finally:
        state.close()
    print(f"{state.describe()}: revision {found or 'none'}; this gateway: {head()}")
    return 0 if found == head() else 1
