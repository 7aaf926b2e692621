"""A privacy plugin for tests that holds a series mid-protect, and its registration.

``held`` leaves the pixels as they are (like ``none``) but, once it has the series, writes
``started_file`` and waits while ``hold_file`` exists: a test can catch a gateway node
holding a series' lease in the middle of protecting it (and kill it there), then let go.
Registered through a distribution's metadata (``install``) in a folder the gateway
process gets on PYTHONPATH, the way a site adds its own plugin.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydicom.dataset import Dataset

from gateway.plugin import Context


class HeldTransform:
    """Waits while ``hold_file`` exists; nothing to record."""

    name = "held"
    series_level = True

    def __init__(self, hold_file: str, started_file: str) -> None:
        self.hold_file = Path(hold_file)
        self.started_file = Path(started_file)

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        self.started_file.write_text(str(os.getpid()))
        while self.hold_file.exists():
            time.sleep(0.05)
        return [b"" for _ in series]

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        return None


def install(folder: Path) -> Path:
    """Register ``held`` in ``folder`` (a ``*.dist-info``); returns the folder to put on PYTHONPATH."""
    dist = folder / "gateway_test_held-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gateway-test-held\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[gateway.plugins]\nheld = {__name__}:HeldTransform\n")
    return folder
