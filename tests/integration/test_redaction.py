"""Burned-in text through the real stack: storescu -> gateway (redaction) -> Orthanc -> movescu/getscu."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from gateway import envelope
from gateway.keyring import Keyring
from gateway.original import dataset_bytes
from gateway.redaction.stage import boxes_of
from gateway.restore import restore_series
from testkit import testimages
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu
from testkit.synthetic import Identity
from tests.conftest import encode
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import ENV, getscu, movescu


@pytest.fixture
def stack(tmp_path: Path, orthanc: OrthancServer) -> Iterator[tuple[GatewayProcess, int, dict[str, Path]]]:
    port = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
    routes = [{"name": "burned-in", "plugin": "none", "redaction": {}}]  # every detector
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, routes=routes, extra={"retrieval": retrieval}).start()
    folder = tmp_path / "study"
    folder.mkdir()
    ct = testimages.make("ct", seed=11).dataset
    us_jpeg = testimages.to_jpeg_baseline(testimages.make("us_rgb", seed=12).dataset)
    files = {"ct": folder / "ct.dcm", "us_jpeg": folder / "us.dcm"}
    files["ct"].write_bytes(encode(ct))
    files["us_jpeg"].write_bytes(encode(us_jpeg))
    # another patient's object whose JPEG stream is garbage: it must be quarantined
    broken = testimages.to_jpeg_baseline(testimages.make("us", seed=13, identity=Identity(
        patient_name="ROE^RICHARD", patient_id="PID-99", accession="ACC99")).dataset)
    broken.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream \xff\xd9"])
    files["broken"] = tmp_path / "broken.dcm"
    files["broken"].write_bytes(encode(broken))
    storescu(gateway.port, [files["ct"]])
    # an ultrasound machine proposes JPEG Baseline only (storescu would otherwise offer
    # Explicit VR too, which the gateway prefers, and then cannot transcode)
    subprocess.run(["storescu", "-xy", "-aet", "MODALITY", "-aec", "GATEWAY", "127.0.0.1", str(gateway.port),
                    str(files["us_jpeg"]), str(files["broken"])], check=True, capture_output=True, timeout=120, env=ENV)
    wait_for(lambda: "forwarded    2" in gateway.status() and "quarantined  1" in gateway.status(), timeout=120)
    yield gateway, port, files
    gateway.stop()


def test_boxes_are_blank_in_orthanc_and_restore_is_exact(tmp_path: Path, orthanc: OrthancServer, stack) -> None:  # type: ignore[no-untyped-def]
    gateway, port, files = stack
    keyring = Keyring.load(gateway.keyring)
    stored = [pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{i}/file"))) for i in orthanc.get("/instances")]
    assert len(stored) == 2
    kinds = set()
    for ds in stored:
        records = dict(envelope.open_envelope(ds, keyring).payload.records)
        boxes = boxes_of(records["redaction"])
        assert boxes, "text was found and blanked"
        assert ds.BurnedInAnnotation == "NO"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian  # the JPEG one travels decoded
        pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns, -1)
        fill = 0 if ds.Modality == "US" else pixels.min()
        for top, left, bottom, right in boxes:
            assert (pixels[:, top:bottom, left:right, :] == fill).all()  # every pixel, every frame, every sample
        kinds.add(ds.Modality)
        name = "us_jpeg" if ds.Modality == "US" else "ct"
        truth = testimages.make("us_rgb" if name == "us_jpeg" else "ct", seed=12 if name == "us_jpeg" else 11).truth
        ident = np.isin(truth.char_labels, np.nonzero(truth.identifying)[0] + 1)
        blank = (pixels == fill).all(axis=(0, 3))
        assert blank[ident].mean() > 0.95 and blank[truth.anatomy].mean() < 0.01
    assert kinds == {"CT", "US"}

    # Orthanc's copies restore to the originals byte for byte, the JPEG stream included
    restored = restore_series([orthanc.get(f"/instances/{i}/file") for i in orthanc.get("/instances")], keyring)
    assert all(r.error is None and r.data for r in restored)
    by_uid = {str(pydicom.dcmread(io.BytesIO(r.data)).SOPInstanceUID): r.data for r in restored if r.data}
    for name in ("ct", "us_jpeg"):
        data = by_uid[str(pydicom.dcmread(files[name]).SOPInstanceUID)]
        assert dataset_bytes(data) == dataset_bytes(files[name].read_bytes())

    # Through DICOM to a restore AE title that takes only uncompressed data: the CT arrives
    # exact, the JPEG original decoded after its restore was verified (same pixels).
    study_uid = str(pydicom.dcmread(files["ct"]).StudyInstanceUID)
    ct_uid = str(pydicom.dcmread(files["ct"]).SOPInstanceUID)
    movescu(gateway, tmp_path / "moved", "WS_RESTORE", port, "WS_RESTORE", study_uid)
    moved = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in (tmp_path / "moved").iterdir()}
    assert dataset_bytes(moved[ct_uid].read_bytes()) == dataset_bytes(files["ct"].read_bytes())
    us = pydicom.dcmread(files["us_jpeg"])
    decoded = pydicom.dcmread(moved[str(us.SOPInstanceUID)])
    assert not decoded.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(decoded.pixel_array, us.pixel_array)
    getscu(gateway, tmp_path / "got", "WS_RESTORE", study_uid)
    got = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in (tmp_path / "got").iterdir()}
    assert [e for e in pydicom.dcmread(got[ct_uid])] == [e for e in pydicom.dcmread(files["ct"])]


def test_undecodable_pixels_are_quarantined_and_shown(stack) -> None:  # type: ignore[no-untyped-def]
    gateway, _, _ = stack
    status = gateway.status()
    assert "quarantined  1" in status
    assert "redaction could not protect the series: pixel data cannot be decoded" in status
    assert "ROE" not in status and "PID-99" not in status
