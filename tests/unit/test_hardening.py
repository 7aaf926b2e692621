"""Small defences: unknown elements, non-image classes, streamed intake, a poisonous series."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import text

from gateway import worker as worker_module
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.deid.deidentify import Deidentifier
from gateway.deid.profile import Profile
from gateway.pseudonym import Pseudonymizer
from gateway.sop_classes import is_image
from gateway.spool import Spool


def test_an_element_the_standard_does_not_define_is_removed() -> None:
    ds = Dataset()
    ds.PatientID = "PID-1"
    ds.Manufacturer = "ACME"
    ds.add_new(0x00100011, "LO", "DOE^JANE")  # a damaged PatientName tag: not in the dictionary
    out = Deidentifier(Profile(frozenset()), Pseudonymizer(b"s" * 32)).run(ds).dataset
    assert 0x00100011 not in out
    assert out.Manufacturer == "ACME"  # a defined attribute the profile keeps stays


def test_images_and_non_images_are_told_apart() -> None:
    assert is_image("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assert is_image("1.2.840.10008.5.1.4.1.1.6.1")  # US Image Storage
    assert is_image("1.2.840.10008.5.1.4.1.1.481.2")  # RT Dose: pixels, no "Image" in its name
    assert not is_image("1.2.840.10008.5.1.4.1.1.104.1")  # Encapsulated PDF
    assert not is_image("1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR
    assert not is_image("1.2.3.4")  # unknown


def test_a_streamed_object_is_taken_in_without_a_copy_and_survives_its_temp_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.receiving / "tmp123.dcm"
    received.write_bytes(b"streamed DICOM bytes")
    spool.accept(spool.arrive(received, "CT1"), "CT1", "2.25.1", "2.25.2", "CT", "1.2.840.10008.5.1.4.1.1.2")
    received.unlink()  # pynetdicom removes its temporary file after the handler returns
    (item,) = spool.received("2.25.1")
    assert item.path.read_bytes() == b"streamed DICOM bytes"
    (spool.receiving / "cut-off.dcm").write_bytes(b"half")
    spool.close()
    assert list(Spool(tmp_path / "spool").receiving.iterdir()) == []  # never acknowledged


def test_a_series_that_breaks_the_pipeline_is_quarantined_and_the_next_one_goes_on(tmp_path: Path,
                                                                                    monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = Config.model_validate({
        "senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "keyring": str(tmp_path / "k.json"), "spool": {"path": str(tmp_path / "spool")},
        "routes": [{"name": "all"}], "scheduler": {"settle_seconds": 0},
    })
    spool = Spool(tmp_path / "spool")
    for series in ("2.25.1", "2.25.2"):
        spool.accept(b"x", "CT1", series, series + "0", "CT", "1.2.840.10008.5.1.4.1.1.2")
    calls = []

    def protect(sources, route, keyring, keys, pool=None, outputs=None):  # type: ignore[no-untyped-def]
        calls.append(len(sources))
        raise RuntimeError("DOE^JANE broke the decoder")  # exception text may quote content

    monkeypatch.setattr(worker_module, "protect_batches", protect)
    audit = AuditLog(tmp_path / "audit.jsonl")
    worker = worker_module.Worker(config, keyring=None, spool=spool, forwarder=None, index=None, audit=audit)  # type: ignore[arg-type]
    worker.process_settled()
    assert calls == [1, 1]
    assert spool.counts() == {"quarantined": 2}
    with spool.state.read() as conn:
        reasons = conn.execute(text("SELECT reason FROM series")).all()
    assert all("RuntimeError" in r[0] and "DOE" not in r[0] for r in reasons)
    assert [(line["action"], line["series"]) for line in audit.lines()] == [("quarantine", "2.25.1"),
                                                                            ("quarantine", "2.25.2")]


def test_a_received_file_whose_row_was_lost_gets_it_back_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.accept(b"first", "CT 1", "2.25.1", "2.25.10", "CT", "1.2.840.10008.5.1.4.1.1.2")
    spool.accept(b"second", "CT 1", "2.25.1", "2.25.11", "CT", "1.2.840.10008.5.1.4.1.1.2")
    with spool.state.write() as conn:  # as if its commit died with the power
        conn.execute(text("DELETE FROM instances WHERE sop_token='2.25.11'"))
    (spool.incoming / "junk.00.dcm").write_bytes(b"not DICOM")
    spool.close()

    reopened = Spool(tmp_path / "spool")
    seen = []

    def describe(path: Path) -> tuple[tuple[str, str, str, str], str | None]:
        if path.read_bytes() != b"second":
            raise ValueError("cannot read")
        seen.append(path.name)
        return ("2.25.1", "2.25.11", "CT", "1.2.840.10008.5.1.4.1.1.2"), None

    assert reopened.recover(describe) == 1
    items = reopened.received("2.25.1")
    assert sorted(i.sop_token for i in items) == ["2.25.10", "2.25.11"]
    assert all(i.calling_ae == "CT 1" for i in items)  # the file name kept the calling AE title
    assert (reopened.quarantine_dir / "unindexed" / "junk.00.dcm").exists()
    assert reopened.recover(describe) == 0  # nothing twice


def test_a_series_is_protected_in_batches_with_the_whole_series_identity_gated(tmp_path: Path, keyring,  # type: ignore[no-untyped-def]
                                                                              monkeypatch) -> None:
    import io

    import pydicom

    from gateway import protect
    from gateway.protect import Quarantine, protect_batches
    from gateway.restore import restore_series
    from gateway.route_spec import RouteSpec
    from gateway.study_keys import MemoryDataKeys
    from testkit import synthetic
    from tests.conftest import encode

    monkeypatch.setattr(protect, "BATCH_BYTES", 20_000)  # a few 64x64 objects per batch
    series = synthetic.ct_series(7, size=64)
    paths = []
    for i, ds in enumerate(series):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(encode(ds))
    batches = list(protect_batches(paths, RouteSpec(), keyring, MemoryDataKeys()))
    assert len(batches) > 2 and sum(len(b) for b in batches) == 7
    outs = [p.data for b in batches for p in b]
    assert len({pydicom.dcmread(io.BytesIO(o)).SeriesInstanceUID for o in outs}) == 1  # one series still
    assert [r.data for r in restore_series(outs, keyring)] == [p.read_bytes() for p in paths]

    # identity taken out of the first object only, but left in a kept attribute of the last:
    # the gate knows it from the first pass over every header, whatever the batches
    series[0].OtherPatientIDs = "XQ-778899"
    series[-1].ManufacturerModelName = "XQ-778899"
    for path, ds in zip(paths, series, strict=True):
        path.write_bytes(encode(ds))
    with pytest.raises(Quarantine, match="PHI gate"):
        list(protect_batches(paths, RouteSpec(), keyring, MemoryDataKeys()))
