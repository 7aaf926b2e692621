"""The intake's fsyncs: a folder fsync shared by concurrent C-STOREs still covers each of
them, and a file fsync started early still comes before Success."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from gateway import spool as spool_module
from gateway.spool import Spool, SpoolError, sync_soon


def test_concurrent_folder_syncs_share_fsyncs_and_each_waits_for_one_begun_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[float, float]] = []

    def slow_fsync(folder: Path) -> None:
        start = time.monotonic()
        time.sleep(0.02)
        runs.append((start, time.monotonic()))

    monkeypatch.setattr(spool_module, "_fsync_path", slow_fsync)
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one() -> None:
        called = time.monotonic()
        spool_module._fsync_dir(tmp_path)
        with lock:
            calls.append((called, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.003)  # arriving one after the other, as C-STOREs end
    for t in threads:
        t.join()
    assert len(runs) < 8  # shared
    for called, returned in calls:  # each covered by an fsync that began after its call
        assert any(called <= start and end <= returned for start, end in runs)


def test_a_failed_folder_fsync_fails_those_that_waited_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(folder: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_path", broken)
    with pytest.raises(OSError):
        spool_module._fsync_dir(tmp_path)
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "x.dcm"
    received.write_bytes(b"object")
    with pytest.raises(SpoolError, match="spool file write failed"):
        spool.accept(received, "CT1", "2.25.1", "2.25.2", "CT", "1.2.840.10008.5.1.4.1.1.2")
    assert list(spool.incoming.iterdir()) == [] and spool.counts() == {}  # nothing half-accepted


def test_an_early_file_fsync_is_waited_for_and_its_failure_refuses(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "x.dcm"
    received.write_bytes(b"object")
    done = threading.Event()

    def slow(path: Path) -> None:
        time.sleep(0.05)
        done.set()

    monkeypatch.setattr(spool_module, "_fsync_file", slow)
    spool.accept(received, "CT1", "2.25.1", "2.25.2", "CT", "1.2.840.10008.5.1.4.1.1.2", synced=sync_soon(received))
    assert done.is_set()  # accept returned (Success may be said) only after the file's fsync

    def broken(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_file", broken)
    received.write_bytes(b"another")
    with pytest.raises(SpoolError):
        spool.accept(received, "CT1", "2.25.1", "2.25.3", "CT", "1.2.840.10008.5.1.4.1.1.2",
                     synced=sync_soon(received))
    assert spool.counts() == {"received": 1}
