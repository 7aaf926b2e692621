"""The intake's fsyncs: a folder fsync shared by concurrent C-STOREs still covers each of
them, and durability started early (``Spool.arrive``) still comes before Success."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway import spool as spool_module
from gateway.spool import Spool, SpoolError


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
        spool.accept(spool.arrive(received, "CT1"), "CT1", "2.25.1", "2.25.2", "CT", "1.2.840.10008.5.1.4.1.1.2")
    assert list(spool.incoming.iterdir()) == [] and spool.counts() == {}  # nothing half-accepted
    with spool.state.read() as conn:  # the row written meanwhile was taken back, its series too
        assert conn.execute(text("SELECT count(*) FROM series")).scalar() == 0


def test_an_arrival_is_durable_before_accept_returns_and_a_failed_fsync_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "x.dcm"
    received.write_bytes(b"object")
    done = threading.Event()

    def slow(path: Path) -> None:
        time.sleep(0.05)
        done.set()

    monkeypatch.setattr(spool_module, "_fsync_file", slow)
    arrival = spool.arrive(received, "CT1", "GATEWAY", "10.0.0.1")
    spool.accept(arrival, "CT1", "2.25.1", "2.25.2", "CT", "1.2.840.10008.5.1.4.1.1.2")
    assert done.is_set()  # accept returned (Success may be said) only after the file's fsync
    assert arrival.path.read_bytes() == b"object"

    def broken(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_file", broken)
    received.write_bytes(b"another")
    with pytest.raises(SpoolError):
        spool.accept(spool.arrive(received, "CT1"), "CT1", "2.25.1", "2.25.3", "CT", "1.2.840.10008.5.1.4.1.1.2")
    assert spool.counts() == {"received": 1} and len(list(spool.incoming.iterdir())) == 1


def test_a_refused_arrival_leaves_no_name_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "x.dcm"
    received.write_bytes(b"object")
    linked = threading.Event()
    real_link = spool_module.os.link

    def slow_link(src: Path, dst: Path) -> None:  # the background link is late: turn_away waits for it
        time.sleep(0.05)
        real_link(src, dst)
        linked.set()

    monkeypatch.setattr(spool_module.os, "link", slow_link)
    spool.turn_away(spool.arrive(received, "CT1"))
    assert linked.is_set() and list(spool.incoming.iterdir()) == [] and spool.counts() == {}
