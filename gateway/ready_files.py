"""Files for incoming objects, created before the objects arrive.

pynetdicom streams each received C-STORE data set into a new temporary file (the spool's
``receiving`` folder, ``listener.py``). Creating a file is a journal transaction; while
the fsyncs of the objects before it commit, the creation waits for them: a sixth of the
listener's samples on one association went there (py-spy, ``BENCHMARKS.md``, issue 16).
Here a background thread keeps ``READY`` files created and open in the folder, and the
message decoder takes one instead of creating its own; when none is left it creates one
itself, as before. A file left over by a stop or a crash is an empty file in the folder
the spool empties at its next start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

from pynetdicom import dimse_messages

READY = 16


class _Ready:
    """The part of a NamedTemporaryFile pynetdicom uses: ``name``, ``file``, ``write``, ``close``."""

    def __init__(self, folder: Path) -> None:
        fd, self.name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


class ReadyFiles:
    """Created files waiting in ``folder`` for the objects to come."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ready: deque[_Ready] = deque()
        self._wanted = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._keep_ready, name="ready-files", daemon=True)

    def install(self) -> None:
        """Hand out these files to every C-STORE this process receives from now on."""
        dimse_messages.NamedTemporaryFile = self.take
        self._thread.start()
        self._wanted.set()

    def take(self, *args: Any, **kwargs: Any) -> Any:
        """A ready file for a received data set (none left: one made now, in the same folder);
        a request of another kind gets what it asked for."""
        if args or kwargs != {"delete": False, "mode": "wb", "suffix": ".dcm"}:
            return tempfile.NamedTemporaryFile(*args, **kwargs)
        self._wanted.set()
        try:
            return self._ready.popleft()
        except IndexError:
            return tempfile.NamedTemporaryFile(dir=self.folder, **kwargs)

    def stop(self) -> None:
        """Stop making files and remove those not taken."""
        self._stopped = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()
        while self._ready:
            ready = self._ready.popleft()
            ready.close()
            with contextlib.suppress(OSError):
                os.unlink(ready.name)

    def _keep_ready(self) -> None:
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            while not self._stopped and len(self._ready) < READY:
                try:
                    self._ready.append(_Ready(self.folder))
                except OSError:  # a full disk: pynetdicom creates its own, and meets the same error
                    break
