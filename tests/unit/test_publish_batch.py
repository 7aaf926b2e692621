"""Forwarding a batch asks Orthanc about all of its SOP instances at once, before and after
the uploads, and still leaves exactly one copy of each, wherever the old ones were."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import text

from gateway.audit import AuditLog
from gateway.config import Config
from gateway.forwarder import Unreachable
from gateway.index import Index
from gateway.keyring import Keyring
from gateway.protect import protect_series
from gateway.route_spec import RouteSpec
from gateway.spool import Spool
from gateway.study_keys import MemoryDataKeys
from gateway.worker import Worker
from testkit import synthetic
from tests.conftest import encode


class FakeOrthanc:
    """Holds instances by id; ``extra`` copies appear beside the next uploads (another writer)."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}  # Orthanc id -> SOP Instance UID
        self.requests: list[str] = []
        self.extra = 0

    def copies_of(self, sop_uids: list[str]) -> dict[str, list[str]]:
        self.requests.append("find many")
        return {uid: ids for uid in sop_uids if (ids := sorted(i for i, u in self.held.items() if u == uid))}

    def delete(self, orthanc_id: str) -> None:
        self.requests.append("delete")
        del self.held[orthanc_id]

    def send(self, data: bytes) -> str:
        self.requests.append("send")
        sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        orthanc_id = hashlib.sha1(data).hexdigest()
        self.held[orthanc_id] = sop
        for n in range(self.extra):
            self.held[f"{orthanc_id}-other{n}"] = sop
        return orthanc_id


def _worker(tmp_path: Path, keyring: Keyring, orthanc: FakeOrthanc) -> tuple[Worker, Spool, Index]:
    config = Config.model_validate({
        "senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "keyring": str(tmp_path / "k.json"), "spool": {"path": str(tmp_path / "spool")},
        "routes": [{"name": "all"}], "scheduler": {"settle_seconds": 0},
    })
    spool, index = Spool(tmp_path / "spool"), Index(tmp_path / "index.sqlite3")
    worker = Worker(config, keyring, spool, orthanc, index, AuditLog(tmp_path / "audit.jsonl"))  # type: ignore[arg-type]
    return worker, spool, index


def _queue(spool: Spool, keyring: Keyring, series: list[pydicom.Dataset], token: str) -> list[str]:
    """Protected copies of ``series`` waiting to be forwarded; their SOP UIDs."""
    outs = protect_series([encode(ds) for ds in series], RouteSpec(), keyring, MemoryDataKeys())
    ids = [spool.accept(encode(ds), "CT1", token, p.sop_uid, "CT", str(ds.SOPClassUID))
           for ds, p in zip(series, outs, strict=True)]
    for row_id, p in zip(ids, outs, strict=True):
        spool.write_output(row_id, p.data)
    spool.protected(token, "all", ids)
    return [p.sop_uid for p in outs]


def test_a_batch_takes_two_finds_and_replaces_copies_held_elsewhere(tmp_path: Path, keyring: Keyring) -> None:
    orthanc = FakeOrthanc()
    worker, spool, index = _worker(tmp_path, keyring, orthanc)
    series = synthetic.ct_series(5, size=32)
    sops = _queue(spool, keyring, series, "s1")
    worker.forward_due()
    assert orthanc.requests == ["find many"] + ["send"] * 5 + ["find many"]  # not two finds an object
    assert sorted(orthanc.held.values()) == sorted(sops) and index.count() == 5

    # a correction of two objects, this time as another series would hold them (a stale
    # copy under another Orthanc id, unknown to the index); a byte-identical re-send of a third
    orthanc.held["stale-copy"] = sops[1]
    for ds in series[:2]:
        ds.PatientID = "PID-CORRECTED"
    orthanc.requests.clear()
    _queue(spool, keyring, series[:3], "s2")
    worker.forward_due()
    assert orthanc.requests.count("find many") == 2
    assert orthanc.requests.count("send") == 2  # the unchanged third is not sent again
    assert "stale-copy" not in orthanc.held
    assert sorted(orthanc.held.values()) == sorted(sops)  # one copy per SOP instance
    entries = {e.sop_uid: e for e in index.entries(keyring)}
    assert {sop: entries[sop].orthanc_id in orthanc.held for sop in sops} == dict.fromkeys(sops, True)
    assert spool.counts() == {"forwarded": 8}


def test_another_copy_after_the_upload_defers_the_object(tmp_path: Path, keyring: Keyring) -> None:
    orthanc = FakeOrthanc()
    worker, spool, index = _worker(tmp_path, keyring, orthanc)
    orthanc.extra = 1  # another writer: a second copy beside each upload
    _queue(spool, keyring, synthetic.ct_series(2, size=32), "s1")
    worker.forward_due()
    assert index.count() == 0 and spool.counts() == {"protected": 2}  # to be tried again, not recorded
    with spool.state.read() as conn:
        errors = [r[0] for r in conn.execute(text("SELECT error FROM instances"))]
    assert all("copies of the instance after the upload" in e for e in errors)


def test_orthanc_down_at_the_first_question_defers_the_whole_batch(tmp_path: Path, keyring: Keyring) -> None:
    orthanc = FakeOrthanc()

    def down(sop_uids: list[str]) -> dict[str, list[str]]:
        raise Unreachable("Orthanc is not reachable (ConnectionError)")

    orthanc.copies_of = down  # type: ignore[method-assign]
    worker, spool, _ = _worker(tmp_path, keyring, orthanc)
    _queue(spool, keyring, synthetic.ct_series(3, size=32), "s1")
    worker.forward_due()
    assert orthanc.held == {} and spool.due() == []  # every object waits for its backoff
    assert spool.counts() == {"protected": 3}


def test_what_was_uploaded_is_recorded_when_another_upload_finds_orthanc_down(tmp_path: Path,
                                                                             keyring: Keyring) -> None:
    orthanc = FakeOrthanc()
    worker, spool, index = _worker(tmp_path, keyring, orthanc)
    sops = _queue(spool, keyring, synthetic.ct_series(3, size=32), "s1")
    send = orthanc.send

    def flaky(data: bytes) -> str:
        if str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) == sops[1]:
            raise Unreachable("Orthanc answered HTTP 503 to POST instances")
        return send(data)

    orthanc.send = flaky  # type: ignore[method-assign]
    worker.forward_due()
    recorded = {e.sop_uid for e in index.entries(keyring)}
    assert sops[1] not in recorded and spool.counts() == {"forwarded": len(recorded), "protected": 3 - len(recorded)}
    assert recorded == set(orthanc.held.values())  # every copy Orthanc holds is in the index


def test_forwarding_takes_what_protection_handed_on_unless_the_copy_changed_since(
        tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import worker as worker_module
    from gateway.protect import protect_batches
    from gateway.pseudonym import Pseudonymizer
    from gateway.spool import write_durably

    orthanc = FakeOrthanc()
    worker, spool, index = _worker(tmp_path, keyring, orthanc)
    series = synthetic.ct_series(4, size=32)
    tokens = [Pseudonymizer(keyring.pseudonym_secret).uid(str(ds.SOPInstanceUID)) for ds in series]
    ids = [spool.accept(encode(ds), "CT1", "s1", token, "CT", str(ds.SOPClassUID))
           for ds, token in zip(series, tokens, strict=True)]
    outputs = [spool.output_path(i) for i in ids]
    for batch in protect_batches([i.path for i in spool.received("s1")], RouteSpec(), keyring, MemoryDataKeys(),
                                 None, outputs):
        worker._hand_on(batch)
    spool.protected("s1", "all", ids)
    write_durably(outputs[2], outputs[2].read_bytes())  # rewritten since: another file now
    opened = []
    original = worker_module.open_for_publishing
    monkeypatch.setattr(worker_module, "open_for_publishing", lambda data, *a: opened.append(1) or original(data, *a))
    worker.forward_due()
    assert len(opened) == 1  # only the rewritten copy was parsed and its envelope opened again
    assert sorted(orthanc.held.values()) == sorted(tokens) and spool.counts() == {"forwarded": 4}
    assert sorted(e.sop_uid for e in index.entries(keyring)) == sorted(tokens)
