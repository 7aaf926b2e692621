"""The audit log: every query, retrieval, restore and refusal, one JSON line each.

Who (calling AE title), from where (IP address), what (operation, level, the studies by
their pseudonymous UIDs), and the outcome with counts. Patient identity never appears:
studies are named by the UIDs Orthanc holds. The file is append-only and fsynced per
line, because an audit trail that loses its last lines in a crash is no trail. Each line,
once on disk, is also handed to ``forward`` where the site has an audit record repository
(``gateway.atna``: the same event as a DICOM audit message over syslog).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends JSON lines to one file."""

    def __init__(self, path: Path, forward: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.forward = forward
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, who: str, address: str, action: str, outcome: str, **what: Any) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ae_title": who, "address": address,
                 "action": action, "outcome": outcome, **what}
        line = json.dumps(entry, sort_keys=False)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.forward is not None:
            self.forward(entry)

    def lines(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for line in fh:
                yield json.loads(line)
