"""Protection in worker processes gives what protection in the service's own process gives:
the same objects in the same order, the same quarantines, byte-exact restores."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway import authenticity, envelope, protect
from gateway.index import entry_of
from gateway.keyring import Keyring
from gateway.protect import Protected, Quarantine, protect_batches
from gateway.protect_pool import ProtectPool
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.spool import FileIdentity
from gateway.study_keys import MemoryDataKeys
from testkit import synthetic
from tests.conftest import encode
from tests.unit.test_roundtrip import FILES


def _content(data: bytes) -> list[tuple[int, object]]:
    """Everything but the envelope (its nonce and data key differ from run to run)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return [(int(e.tag), e.value) for e in ds.iterall() if e.tag.group != envelope.GROUP]


def _protected(paths: list[Path], ring: Keyring, pool: ProtectPool | None) -> list[Protected] | str:
    try:
        return [p for batch in protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool) for p in batch]
    except Quarantine as exc:
        return f"quarantine: {exc}"


def test_every_real_file_comes_out_of_the_pool_as_out_of_the_service(tmp_path: Path, ring: Keyring,
                                                                       pool: ProtectPool) -> None:
    """The same objects (character sets, implicit VR, compressed, multi-frame), the same
    quarantines, byte-exact restores. Forwarding takes the entry and the tag from protection
    instead of parsing the copy and opening its envelope again: both must be what that would
    give, in the service and in the pool."""
    for n, path in enumerate(FILES):
        copies: list[bytes] = []
        outcomes: list[str] = []
        for where in (None, pool):
            target = tmp_path / f"{where is None}-{n}.dcm"
            try:
                (protected,) = [p for b in protect_batches([path], RouteSpec(), ring, MemoryDataKeys(), where, [target])
                                for p in b]
            except Quarantine as exc:
                outcomes.append(f"quarantine: {exc}")
                continue
            outcomes.append("protected")
            data = target.read_bytes()
            copies.append(data)
            assert (protected.entry, protected.sealing) == entry_of(data, "", ring), path.name
            assert protected.written == FileIdentity.of(target) and protected.tag_at is not None
            value = data[protected.tag_at:protected.tag_at + len(authenticity.PLACEHOLDER)].decode()
            assert authenticity.verify(data, value, ring.authenticity), path.name
        assert outcomes[0] == outcomes[1], path.name
        if len(copies) == 2:
            assert _content(copies[1]) == _content(copies[0]), path.name
            assert [r.data for r in restore_series([copies[1]], ring)] == [path.read_bytes()], path.name


def _series(tmp_path: Path, n: int = 9) -> tuple[list[Path], list[Dataset]]:
    series = synthetic.ct_series(n, size=64)
    paths = []
    for i, ds in enumerate(series):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(encode(ds))
    return paths, series


def test_a_series_over_several_batches_keeps_its_order_and_restores(tmp_path: Path, ring: Keyring, pool: ProtectPool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protect, "BATCH_BYTES", 30_000)  # a few 64x64 objects per batch, chunks within
    paths, _ = _series(tmp_path)
    batches = list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool))
    assert len(batches) > 2
    outs = [p.data for b in batches for p in b]
    here = _protected(paths, ring, None)
    assert not isinstance(here, str)
    assert [_content(o) for o in outs] == [_content(p.data) for p in here]  # same objects, same order
    assert [r.data for r in restore_series(outs, ring)] == [p.read_bytes() for p in paths]


def test_identity_of_one_chunk_is_gated_in_every_other(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    # taken out of the first object only, left in a kept attribute of the last: the last
    # object's process knows it from the survey of every header
    paths, series = _series(tmp_path)
    series[0].OtherPatientIDs = "XQ-778899"
    series[-1].ManufacturerModelName = "XQ-778899"
    for path, ds in zip(paths, series, strict=True):
        path.write_bytes(encode(ds))
    with pytest.raises(Quarantine, match="PHI gate: .*ManufacturerModelName: OtherPatientIDs"):
        list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool))


def test_a_value_after_the_pixel_data_is_gated_too(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    # the survey reads headers only; a value only the full read finds (a private element
    # after the pixel data) still joins the needles of its chunk
    paths, series = _series(tmp_path, n=2)
    block = series[1].private_block(0x7FE1, "ACME 1.1", create=True)
    block.add_new(0x10, "PN", "Sonderbar^Quentin")
    series[1].ManufacturerModelName = "Sonderbar Quentin 7"
    paths[1].write_bytes(encode(series[1]))
    with pytest.raises(Quarantine, match="PHI gate"):
        list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool))


def test_errors_in_a_process_come_back_as_in_the_service(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    paths, _ = _series(tmp_path, n=3)
    paths[1].write_bytes(b"\x00" * 40)
    with pytest.raises(Quarantine, match="object 1 of the series cannot be parsed"):
        list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool))
    paths[1].unlink()  # gone from the spool: as in the service's process (the worker sorts it out)
    for where in (None, pool):
        with pytest.raises(FileNotFoundError):
            list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), where))


def test_a_process_that_dies_leaves_a_working_pool(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        pool.run(os._exit, [(9,)])
    paths, _ = _series(tmp_path, n=3)
    outs = _protected(paths, ring, pool)
    assert not isinstance(outs, str) and len(outs) == 3


def test_a_service_stop_signal_does_not_end_a_protect_process(tmp_path: Path, ring: Keyring,
                                                              pool: ProtectPool) -> None:
    # systemd and terminals signal the whole process group; the service ends its protect
    # processes itself once its current step is done, so its step does not break midway
    import signal
    import time

    paths, _ = _series(tmp_path, n=4)
    assert not isinstance(_protected(paths, ring, pool), str)
    workers = [int(pid) for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()
               if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    outs = _protected(paths, ring, pool)
    assert not isinstance(outs, str) and len(outs) == 4


def test_the_processes_write_the_outputs_and_a_write_fault_comes_back_as_the_spools(
        tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    from gateway.spool import SpoolError

    paths, _ = _series(tmp_path, n=5)
    for where in (None, pool):
        out = tmp_path / f"out-{where is None}"
        out.mkdir()
        targets = [out / f"{n}.dcm" for n in range(5)]
        protected = [p for b in protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), where, targets) for p in b]
        assert [(p.path, p.data) for p in protected] == [(t, b"") for t in targets]  # the bytes stayed where written
        assert [r.data for r in restore_series([t.read_bytes() for t in targets], ring)] == \
            [p.read_bytes() for p in paths]
        assert sorted(out.iterdir()) == sorted(targets)  # no temporary file left
    gone = [tmp_path / "no-such-folder" / f"{n}.dcm" for n in range(5)]
    with pytest.raises(SpoolError, match="spool file write failed"):
        list(protect_batches(paths, RouteSpec(), ring, MemoryDataKeys(), pool, gone))
