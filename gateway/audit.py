"""The audit log: every query, retrieval, restore and refusal, one JSON line each.

Who (calling AE title), from where (IP address), what (operation, level, the studies by
their pseudonymous UIDs), and the outcome with counts. Patient identity never appears:
studies are named by the UIDs Orthanc holds. Each node appends to its own file, fsynced per
line, because an audit trail that loses its last lines in a crash is no trail; the same
line then goes into the state database's ``audit_events`` table, where ``gateway audit``
reads every node's lines together (a single node reads the same table). The file stays
the node's durable record should the database refuse a write (logged, never raised into
the association being audited). Each line, once on disk, is also handed to ``forward``
where the site has an audit record repository (``gateway.atna``: the same event as a DICOM
audit message over syslog).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Config
from gateway.state.engine import State
from gateway.state.schema import audit_events

log = logging.getLogger("gateway.audit")


def audit_path(config: Config) -> Path:
    """This node's audit file: ``audit.jsonl`` in the spool of a single node; on a shared
    spool folder each node its own (one file appended by several hosts over NFS is not safe)."""
    folder = config.spool.path
    return folder / "audit.jsonl" if not config.state.url else folder / "audit" / f"{config.state.node}.jsonl"


class AuditLog:
    """Appends JSON lines to one file and, given a ``state``, to the shared table."""

    def __init__(self, path: Path, forward: Callable[[dict[str, Any]], None] | None = None,
                 state: State | None = None) -> None:
        self.path = path
        self.forward = forward
        self.state = state
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, who: str, address: str, action: str, outcome: str, **what: Any) -> None:
        now = time.time()
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "ae_title": who,
                 "address": address, "action": action, "outcome": outcome, **what}
        line = json.dumps(entry, sort_keys=False)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.state is not None:
            try:
                with self.state.write(one_statement=True) as conn:
                    conn.execute(insert(audit_events).values(node=self.state.node, at=now, event=line))
            except SQLAlchemyError as exc:
                log.error("audit line kept in %s only: the state database refused it (%s)", self.path.name,
                          type(exc).__name__)
        if self.forward is not None:
            self.forward(entry)

    def lines(self) -> Iterator[dict[str, Any]]:
        """Every node's lines from the table, oldest first; this file's without a ``state``."""
        if self.state is not None:
            with self.state.read() as conn:
                events = list(conn.execute(select(audit_events.c.event).order_by(audit_events.c.id)).scalars())
            for event in events:
                yield json.loads(event)
            return
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for line in fh:
                yield json.loads(line)
