"""Structural verification of received objects; the spool's quarantine operations and retention."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.audit import AuditLog
from gateway.config import Config
from gateway.integrity import Damaged, Header, verify
from gateway.spool import Spool
from gateway.worker import Worker, is_infrastructure
from testkit import synthetic
from tests.conftest import encode

# pydicom's own test files that are damaged on purpose: cut short, too-short fragments, an
# unreadable Number of Frames, pixel data with no Rows or Columns to read it by.
KNOWN_DAMAGED = {"rtplan_truncated.dcm", "MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm",
                 "badVR.dcm", "nested_priv_SQ.dcm", "meta_missing_tsyntax.dcm"}


def _check(tmp_path: Path, data: bytes) -> str | None:
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    try:
        verify(path)
    except Damaged as exc:
        return str(exc)
    return None


def test_every_whole_file_pydicom_ships_passes_and_its_header_reads_as_pydicom_reads_it() -> None:
    refused, misread = {}, {}
    for name in get_testdata_files("*.dcm"):
        path = Path(name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM at all (pydicom ships a few such files)
            continue
        try:
            header = verify(path)
        except Damaged as exc:
            refused[path.name] = str(exc)
            continue
        expected = Header(*(str(ds.get(k, "") or "") for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
                                                               "Modality")))
        if header != expected:  # implicit and big endian, deflated, odd padding: all vendors' files
            misread[path.name] = (header, expected)
    assert set(refused) <= KNOWN_DAMAGED, {k: v for k, v in refused.items() if k not in KNOWN_DAMAGED}
    assert not misread
    assert {"MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"} <= set(refused)


def test_damage_is_named_without_values(tmp_path: Path) -> None:
    ds = synthetic.ct_series(1, size=64)[0]
    good = encode(ds)
    pixel_at = good.index(b"\xe0\x7f\x10\x00OW")
    j2k = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    fragments_at = j2k.index(b"\xe0\x7f\x10\x00")
    assert _check(tmp_path, good) is None and _check(tmp_path, j2k) is None
    cases = {
        "pixel data length goes past what arrived": good[:-3000],
        "pixel data length goes past what arrived ": good[:pixel_at + 8] + (0xFFFFFFF0).to_bytes(4, "little") + bytes(100),
        "a declared length goes past what arrived": good[:712],
        "object ends inside an element": good[:701],
        "an image without pixel data": good[:700],
        "encapsulated pixel data ends without delimiter": j2k[:-8],
        "encapsulated pixel data holds a non-item": j2k[:fragments_at + 12] + b"\xfe\xff\x01\xe0" + j2k[fragments_at + 16:],
        "encapsulated pixel data has no fragment": j2k[:fragments_at + 12] + b"\xfe\xff\x00\xe0\0\0\0\0"
        + b"\xfe\xff\xdd\xe0\0\0\0\0",
    }
    for expected, data in cases.items():
        assert _check(tmp_path, data) == expected.strip(), expected
    # Rows x Columns x frames larger than the pixel data (a lying header, whole file)
    ds.Rows = 128
    assert _check(tmp_path, encode(ds)) == "pixel data shorter than rows x columns x frames"
    for message in cases:
        assert "DOE" not in message and len("damaged: " + message) <= 64


def test_sequences_nested_without_end_are_refused_not_recursed(tmp_path: Path) -> None:
    ds = synthetic.ct_series(1, size=8)[0]
    head = encode(ds)
    pixel_at = head.index(b"\xe0\x7f\x10\x00")
    deep = (b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 5000
    assert "nested deeper" in _check(tmp_path, head[:pixel_at] + deep)
    unclosed = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    assert _check(tmp_path, head[:pixel_at] + unclosed) == "a sequence or item is never closed"


def _config(tmp_path: Path, **spool: object) -> Config:
    return Config.model_validate({"senders": [{"ae_title": "MODALITY"}],
                                  "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
                                  "keyring": str(tmp_path / "keyring.json"),
                                  "spool": {"path": str(tmp_path / "spool"), **spool},
                                  "routes": [{"name": "default"}]})


def _quarantined(spool: Spool, token: str, n: int, tmp_path: Path) -> list[int]:
    ids = []
    for i in range(n):
        src = tmp_path / f"{token}-{i}.dcm"
        src.write_bytes(b"original with identity")
        ids.append(spool.accept(spool.arrive(src, "MODALITY"), "MODALITY", token, f"{token}.{i}", "CT", "1.2.840.10008.5.1.4.1.1.2"))
    spool.quarantine(token, "default", json.dumps({"stage": "gate", "element": "(0008,1090)"}), ids)
    return ids


def test_quarantined_originals_are_purged_after_their_retention_with_an_audit_line(tmp_path: Path) -> None:
    config = _config(tmp_path, quarantine_retention_days=7)
    spool = Spool(config.spool.path)
    _quarantined(spool, "2.25.1", 2, tmp_path)
    _quarantined(spool, "2.25.2", 1, tmp_path)
    old = time.time() - 8 * 86400
    with spool.state.write() as conn:
        conn.execute(text("UPDATE series SET updated_at=:old WHERE series_token='2.25.1'"), {"old": old})
    worker = Worker(config, None, spool, None, None, AuditLog(config.spool.path / "audit.jsonl"))  # type: ignore[arg-type] # purge needs the spool and the audit log only
    worker.purge()
    assert not (spool.quarantine_dir / "2.25.1").exists()
    assert len(list((spool.quarantine_dir / "2.25.2").iterdir())) == 1  # within its retention: kept
    assert [s.series_token for s in spool.set_aside()] == ["2.25.2"]
    assert spool.counts()["purged"] == 2 and spool.action_counts() == {"retention_purge": 1}
    (line,) = [json.loads(x) for x in (config.spool.path / "audit.jsonl").read_text().splitlines()]
    assert (line["action"], line["series"], line["objects"]) == ("quarantine_purge", "2.25.1", 2)


def test_release_puts_the_originals_back_and_keeps_intake_damage(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ids = _quarantined(spool, "2.25.3", 2, tmp_path)
    detail = spool.series_detail("2.25.3")
    assert detail is not None and json.loads(detail[0].reason or "")["stage"] == "gate"
    assert spool.release("2.25.3", "other") == 2
    assert [i.id for i in spool.received("2.25.3")] == ids and spool.forced_route("2.25.3") == "other"
    assert all(i.path.exists() and i.damage is None for i in spool.received("2.25.3"))
    assert spool.settled_series(10) == ["2.25.3"]  # due at once
    assert spool.action_counts() == {"reroute": 1}


def test_a_second_spool_beside_the_service_leaves_objects_being_received(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    arriving = tmp_path / "spool" / "receiving" / "tmp123.dcm"
    arriving.write_bytes(b"half an object")
    Spool(tmp_path / "spool", intake=False)
    assert arriving.exists()


@pytest.mark.parametrize(("exc", "infra"), [
    (OSError(28, "No space left on device"), True),
    (sqlite3.OperationalError("database or disk is full"), True),
    (sqlite3.OperationalError("database is locked"), True),
    (OperationalError("UPDATE series", {}, sqlite3.OperationalError("database is locked")), True),  # as SQLAlchemy raises it
    (FileNotFoundError(2, "gone"), False),
    (ValueError("bad value"), False),
])
def test_infrastructure_faults_are_told_from_the_series_faults(exc: BaseException, infra: bool) -> None:
    assert is_infrastructure(exc) is infra



def test_a_whole_resend_replaces_a_damaged_copy_kept_for_quarantine(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for name, damage in (("cut", "pixel data length goes past what arrived"), ("whole", None)):
        src = tmp_path / name
        src.write_bytes(b"object")
        spool.accept(spool.arrive(src, "MODALITY"), "MODALITY", "2.25.5", "2.25.5.1", "CT", "1.2.840.10008.5.1.4.1.1.2", damage=damage)
    (latest,) = spool.received("2.25.5")
    assert latest.damage is None and spool.counts()["superseded"] == 1


def test_objects_orthanc_refused_are_set_aside_and_can_be_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    src = tmp_path / "refused.dcm"
    src.write_bytes(b"object")
    row = spool.accept(spool.arrive(src, "MODALITY"), "MODALITY", "2.25.6", "2.25.6.1", "CT", "1.2.840.10008.5.1.4.1.1.2")
    spool.write_output(row, b"protected copy")
    spool.protected("2.25.6", "default", [row])
    spool.failed(row, "Orthanc refused the object (HTTP 400)")
    (aside,) = spool.set_aside()
    assert (aside.series_token, aside.objects) == ("2.25.6", 1)
    assert spool.release("2.25.6", None) == 1
    assert not (spool.outbox / f"{row}.dcm").exists() and [i.id for i in spool.received("2.25.6")] == [row]
    assert spool.set_aside() == []


def _inspector(mode: str):  # type: ignore[no-untyped-def]
    """Listener.inspect with just what it uses of a listener: the damaged-object mode and
    the pseudonymizer."""
    from types import SimpleNamespace

    from gateway.listener import Listener
    from gateway.pseudonym import Pseudonymizer

    ns = SimpleNamespace(config=SimpleNamespace(listener=SimpleNamespace(damaged=mode)),
                         pseudonyms=Pseudonymizer(b"k" * 32))
    ns.describe = lambda path: Listener.describe(ns, path)  # type: ignore[arg-type]
    return lambda path: Listener.inspect(ns, path)  # type: ignore[arg-type]


def test_intake_reads_the_tokens_once_and_names_what_is_missing_or_damaged(tmp_path: Path) -> None:
    from gateway.pseudonym import Pseudonymizer

    ds = synthetic.ct_series(1, size=64)[0]
    whole = tmp_path / "whole.dcm"
    whole.write_bytes(encode(ds))
    tokens = Pseudonymizer(b"k" * 32)
    expected = (tokens.uid(str(ds.SeriesInstanceUID)), tokens.uid(str(ds.SOPInstanceUID)), "CT", str(ds.SOPClassUID))
    assert _inspector("refuse")(whole) == (expected, None)

    nameless = tmp_path / "nameless.dcm"  # a structurally whole object without its SOP Instance UID
    del ds.SOPInstanceUID
    nameless.write_bytes(encode(ds))
    with pytest.raises(Damaged, match="no Series or SOP Instance UID"):
        _inspector("refuse")(nameless)
    with pytest.raises(AttributeError):  # kept for quarantine only if it can be read at all
        _inspector("quarantine")(nameless)

    cut = tmp_path / "cut.dcm"  # truncated in its pixel data: tokens from pydicom, the damage named
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(Damaged):
        _inspector("refuse")(cut)
    described, damage = _inspector("quarantine")(cut)
    assert described == expected and damage == "pixel data length goes past what arrived"


def test_a_damaged_file_found_without_its_row_at_start_goes_to_quarantine(tmp_path: Path) -> None:
    """A crash between the link into incoming/ and the refusal of a damaged object leaves
    its file behind: recovery checks it again and keeps it for quarantine, never forwards it."""
    spool = Spool(tmp_path / "spool")
    ds = synthetic.ct_series(1, size=64)[0]
    (spool.incoming / f"{b'CT1'.hex()}.{b'CT1'.hex()}._.dcm").write_bytes(encode(ds)[:-3000])
    assert spool.recover(_inspector("quarantine")) == 1
    from gateway.pseudonym import Pseudonymizer

    (item,) = spool.received(Pseudonymizer(b"k" * 32).uid(str(ds.SeriesInstanceUID)))
    assert item.calling_ae == "CT1" and item.damage == "damaged on intake: pixel data length goes past what arrived"
