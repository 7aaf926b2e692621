"""A series protected while it arrives (``gateway.protect_ahead``) comes out as the same
series protected at once: the same copies in the same order, restoring byte for byte, and
the same gate, under every identifying value of the series, for copies made before the
object that showed the value had arrived. What cannot be completed so goes the ordinary way."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway import envelope, protect_ahead
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.index import Index
from gateway.keyring import Keyring
from gateway.protect import Quarantine, protect_batches
from gateway.protect_ahead import Ahead
from gateway.protect_pool import ProtectPool
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.spool import Incoming, Spool
from gateway.study_keys import MemoryDataKeys
from gateway.worker import Worker
from testkit import synthetic
from tests.conftest import encode
from tests.unit.test_publish_batch import FakeOrthanc

ROUTE = RouteSpec()


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step here comes right after the objects it protects arrived."""
    monkeypatch.setattr(protect_ahead, "PAUSE_SECONDS", 0)


def _ahead(spool: Spool, ring: Keyring, pool: ProtectPool, settle: float = 3600.0,
           route: tuple[str, RouteSpec] | None = ("default", ROUTE)) -> Ahead:
    return Ahead(spool, ring, pool, lambda token, items: route, lambda: settle)


def _send(spool: Spool, series: list[Dataset]) -> None:
    for ds in series:
        spool.accept(encode(ds), "CT1", "s1", str(ds.SOPInstanceUID), "CT", str(ds.SOPClassUID))


def _content(data: bytes) -> list[tuple[int, object]]:
    """Everything but the envelope (its nonce and data key differ from run to run)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return [(int(e.tag), e.value) for e in ds.iterall() if e.tag.group != envelope.GROUP]


def _waiting(spool: Spool) -> int:
    return len(list(spool.ahead.iterdir()))


def _settled(spool: Spool) -> list[Incoming]:
    return spool.received("s1")


def test_a_series_protected_as_it_arrives_is_the_series_protected_at_once(tmp_path: Path, ring: Keyring,
                                                                          pool: ProtectPool) -> None:
    spool = Spool(tmp_path / "spool")
    ahead = _ahead(spool, ring, pool)
    series = synthetic.ct_series(11, size=64)
    _send(spool, series[:5])
    ahead.step()
    assert _waiting(spool) == 5
    _send(spool, series[5:9])
    ahead.step()
    assert _waiting(spool) == 9
    _send(spool, series[9:])  # arrived after the last step: protected on completion
    items = _settled(spool)
    done = ahead.complete("s1", items, "default", ROUTE)
    assert done is not None and _waiting(spool) == 0
    assert [p.path for p in done] == [spool.output_path(i.id) for i in items]
    outputs = [spool.output_path(i.id).read_bytes() for i in items]
    at_once = [p for b in protect_batches([i.path for i in items], ROUTE, ring, MemoryDataKeys(), pool) for p in b]
    assert [_content(o) for o in outputs] == [_content(p.data) for p in at_once]
    assert [r.data for r in restore_series(outputs, ring)] == [i.path.read_bytes() for i in items]


@pytest.mark.parametrize(("kept", "later", "value"), [
    ("XQ-778899", "DeviceSerialNumber", "XQ-778899"),  # an identifier, found in the raw bytes too
    ("Wolkenstein Oswald 7", "OtherPatientNames", "WOLKENSTEIN^OSWALD"),  # a name in another spelling: decoded text
])
def test_a_value_only_a_later_object_shows_is_gated_in_the_copies_made_before(
        tmp_path: Path, ring: Keyring, pool: ProtectPool, kept: str, later: str, value: str) -> None:
    # in a kept attribute of the first object; taken out of the last, which arrives after
    # the first was protected (and passed the gate as far as the series was known then)
    series = synthetic.ct_series(6, size=64)
    series[0].ManufacturerModelName = kept
    setattr(series[-1], later, value)
    stopped = f"PHI gate: .*ManufacturerModelName: {later}"
    spool = Spool(tmp_path / "spool")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series[:3])
    ahead.step()
    assert _waiting(spool) == 3
    _send(spool, series[3:])  # arrives after the last step: the gate's second look comes with the settle
    with pytest.raises(Quarantine, match=stopped):
        ahead.complete("s1", _settled(spool), "default", ROUTE)
    assert _waiting(spool) == 0
    # arrived before a step: its second look comes then, the copies are dropped, and the
    # settled series takes the ordinary path, whose gate stops it
    spool = Spool(tmp_path / "stepped")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series[:3])
    ahead.step()
    _send(spool, series[3:])
    ahead.step()
    assert _waiting(spool) == 0
    items = _settled(spool)
    assert ahead.complete("s1", items, "default", ROUTE) is None
    with pytest.raises(Quarantine, match=stopped):
        list(protect_batches([i.path for i in items], ROUTE, ring, MemoryDataKeys(), pool))


def test_what_cannot_be_completed_goes_the_ordinary_way(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    series = synthetic.ct_series(4, size=64)
    # a correction re-sent on the way: the copy made of the first version is gone
    spool = Spool(tmp_path / "resent")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series[:3])
    ahead.step()
    _send(spool, series[1:2])
    ahead.step()
    assert _waiting(spool) == 0
    assert ahead.complete("s1", _settled(spool), "default", ROUTE) is None
    # the route's settings changed before the series settled
    spool = Spool(tmp_path / "changed")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series)
    ahead.step()
    assert _waiting(spool) == 4
    assert ahead.complete("s1", _settled(spool), "default", RouteSpec(options=frozenset({"retain_device_identity"}))) is None
    assert _waiting(spool) == 0 and not any(spool.outbox.glob("*.dcm"))
    # most of the series came after the last step: the ordinary path costs less
    spool = Spool(tmp_path / "late")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series[:1])
    ahead.step()
    _send(spool, series[1:])
    assert ahead.complete("s1", _settled(spool), "default", ROUTE) is None and _waiting(spool) == 0


def test_only_series_still_arriving_on_a_route_that_allows_it_are_protected_ahead(tmp_path: Path, ring: Keyring,
                                                                                  pool: ProtectPool) -> None:
    series = synthetic.ct_series(3, size=64)
    spool = Spool(tmp_path / "coverless")  # the route needs the whole series, or goes elsewhere
    _send(spool, series)
    ahead = _ahead(spool, ring, pool, route=None)
    ahead.step()
    assert _waiting(spool) == 0 and ahead.complete("s1", _settled(spool), "default", ROUTE) is None
    spool = Spool(tmp_path / "settled")  # the worker protects a settled series itself
    _send(spool, series)
    ahead = _ahead(spool, ring, pool, settle=0)
    ahead.step()
    assert _waiting(spool) == 0


def test_a_restart_forgets_copies_made_ahead(tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    spool = Spool(tmp_path / "spool")
    _send(spool, synthetic.ct_series(2, size=64))
    _ahead(spool, ring, pool).step()
    assert _waiting(spool) == 2
    spool.close()
    spool = Spool(tmp_path / "spool")
    assert _waiting(spool) == 0  # made again from the originals, which the spool keeps


def test_the_worker_sends_on_what_was_protected_ahead(tmp_path: Path, ring: Keyring) -> None:
    ring.save()
    config = Config.model_validate({
        "senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "keyring": str(ring.path), "spool": {"path": str(tmp_path / "spool")},
        "routes": [{"name": "all"}], "scheduler": {"settle_seconds": 3600},
    })
    spool = Spool(tmp_path / "spool")
    worker = Worker(config, ring, spool, FakeOrthanc(), Index(tmp_path / "index.sqlite3"),  # type: ignore[arg-type]
                    AuditLog(tmp_path / "audit.jsonl"))
    try:
        series = synthetic.ct_series(5, size=64)
        _send(spool, series[:3])
        worker.ahead.step()
        assert _waiting(spool) == 3
        _send(spool, series[3:])
        items = _settled(spool)
        worker.process_series("s1")
        assert _waiting(spool) == 0
        assert [o.out_path for o in spool.due()] == [spool.output_path(i.id) for i in items]
        outputs = [spool.output_path(i.id).read_bytes() for i in items]
        assert [r.data for r in restore_series(outputs, ring)] == [encode(ds) for ds in series]
    finally:
        worker.protect_pool.close()


def test_a_series_still_coming_in_is_left_to_intake(tmp_path: Path, ring: Keyring, pool: ProtectPool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protect_ahead, "PAUSE_SECONDS", 3600)
    spool = Spool(tmp_path / "spool")
    _send(spool, synthetic.ct_series(2, size=64))
    _ahead(spool, ring, pool).step()
    assert _waiting(spool) == 0


def test_a_later_character_set_or_a_damaged_object_sends_the_series_the_ordinary_way(
        tmp_path: Path, ring: Keyring, pool: ProtectPool) -> None:
    # a later object in UTF-8 with a Greek name: the copies made before were gated without
    # that encoding's raw needles, so none of them is used
    series = synthetic.ct_series(4, size=64)
    series[-1].SpecificCharacterSet = "ISO_IR 192"
    series[-1].OtherPatientNames = "Διονυσίου^Ελένη"
    spool = Spool(tmp_path / "charset")
    ahead = _ahead(spool, ring, pool)
    _send(spool, series[:2])
    ahead.step()
    assert _waiting(spool) == 2
    _send(spool, series[2:])
    ahead.step()
    assert _waiting(spool) == 0 and ahead.complete("s1", _settled(spool), "default", ROUTE) is None
    # a truncated object: nothing is protected ahead, the ordinary path says what is wrong
    spool = Spool(tmp_path / "truncated")
    ahead = _ahead(spool, ring, pool)
    good = synthetic.ct_series(3, size=64)
    _send(spool, good[:2])
    spool.accept(encode(good[2])[:300], "CT1", "s1", str(good[2].SOPInstanceUID), "CT", str(good[2].SOPClassUID))
    ahead.step()
    assert _waiting(spool) == 0
    items = _settled(spool)
    assert ahead.complete("s1", items, "default", ROUTE) is None
    with pytest.raises(Quarantine, match="object 2 of the series cannot be parsed"):
        list(protect_batches([i.path for i in items], ROUTE, ring, MemoryDataKeys(), pool))
