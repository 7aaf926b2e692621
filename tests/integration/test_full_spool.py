"""A spool on a small file system the test mounts (tmpfs): full, then freed.

Below the free-space reserve a C-STORE answers 0xA700 and the association goes on; a disk
filled to the last byte under the worker makes it wait, never quarantine; once space
returns everything acknowledged reaches Orthanc, and what was refused is taken when resent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer
from tests.conftest import write_study
from tests.integration.conftest import wait_for

MiB = 2**20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test and gone after it."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root (this test mounts a 16 MiB tmpfs)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, name: str, leave: int) -> Path:
    """A ballast file taking all free space but ``leave`` bytes."""
    ballast = folder / name
    free = shutil.disk_usage(folder).free
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if free > leave:
            os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)
    return ballast


def _send(port: int, files: list[Path], must_last: bool = True) -> list[int]:
    """C-STORE statuses, -1 for no answer (the association ended)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(f).get("Status", -1)) if assoc.is_established else -1 for f in files]
    assert assoc.is_established or not must_last, "the association ended under a full spool"
    if assoc.is_established:
        assoc.release()
    return statuses


def test_a_full_spool_refuses_waits_and_recovers_losing_nothing(tmp_path: Path, orthanc: OrthancServer,
                                                                 small_fs: Path) -> None:
    spool = small_fs / "spool"
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=4, extra={
        "spool": {"path": str(spool), "retention_hours": 0, "free_space_reserve_mb": 2}}).start()
    try:
        first = write_study(tmp_path / "first", (5,), size=64)
        later = write_study(tmp_path / "later", (3,), size=64, identity=synthetic.Identity(accession="ACC20240518"))
        acknowledged = _send(gateway.port, first)
        assert acknowledged == [0] * 5
        # Below the reserve: refused with 0xA700 before anything more is kept, one by one.
        near_full = _fill(small_fs, "ballast-1", leave=1 * MiB)
        refused = _send(gateway.port, later)
        assert refused == [0xA700] * 3
        # The last byte gone while the first series waits to be protected: the worker
        # cannot write, and must wait, not quarantine.
        full = _fill(small_fs, "ballast-2", leave=0)
        # Not a byte left even to receive into: no Success, whatever else happens.
        assert 0 not in _send(gateway.port, later[:1], must_last=False)
        time.sleep(6)
        log = gateway.log_path.read_text()
        assert "it is not quarantined" in log
        assert "quarantined  0" in gateway.status()
        assert orthanc.get("instances") == []
        full.unlink()
        near_full.unlink()
        wait_for(lambda: len(orthanc.get("instances")) == 5, timeout=60)  # by itself, once space is back
        assert _send(gateway.port, later) == [0] * 3  # the modality's retry is taken
        wait_for(lambda: len(orthanc.get("instances")) == 8, timeout=60)
        status = gateway.status()
        assert "quarantined  0" in status and "failed       0" in status
    finally:
        gateway.stop()
