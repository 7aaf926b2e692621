"""Workstations (dcmtk findscu, movescu, getscu) query and retrieve through the gateway."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from gateway.original import dataset_bytes
from testkit.localstack import ORTHANC_USER, GatewayProcess, OrthancServer, free_port, run_cli, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for

ENV = dict(os.environ, TCP_NODELAY="1")


@pytest.fixture
def stack(tmp_path: Path, orthanc: OrthancServer) -> Iterator[tuple[GatewayProcess, dict[str, int]]]:
    ports = {"WS_RESTORE": free_port(), "WS_PSEUDO": free_port()}
    retrieval = {
        "workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"},
                         {"ae_title": "WS_PSEUDO", "policy": "pseudonymized"},
                         {"ae_title": "WS_DENY", "policy": "deny"}],
        "destinations": [{"ae_title": ae, "host": "127.0.0.1", "port": port, "owners": [ae], "allow_cleartext_originals": True} for ae, port in ports.items()],
    }
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval}).start()
    files = write_study(tmp_path / "study", (3, 2), size=64)
    storescu(gateway.port, tmp_path / "study")
    wait_for(lambda: "forwarded    5" in gateway.status())
    gateway.files = files  # type: ignore[attr-defined]
    yield gateway, ports
    gateway.stop()


def findscu(gateway: GatewayProcess, out: Path, calling: str, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-S", "-X", "-od", str(out), "-aet", calling, "-aec", "GATEWAY"]
    for k in keys:
        args += ["-k", k]
    result = subprocess.run([*args, "127.0.0.1", str(gateway.port)], capture_output=True, text=True, env=ENV)
    gateway.last_output = result.stdout + result.stderr  # type: ignore[attr-defined]
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def movescu(gateway: GatewayProcess, out: Path, calling: str, port: int, dest: str, study_uid: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["movescu", "-v", "-S", "-aet", calling, "-aec", "GATEWAY", "-aem", dest, "--port", str(port), "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(gateway.port)],
        capture_output=True, text=True, env=ENV, timeout=300)
    return result.stdout + result.stderr


def getscu(gateway: GatewayProcess, out: Path, calling: str, study_uid: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["getscu", "-v", "-S", "-aet", calling, "-aec", "GATEWAY", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(gateway.port)],
        capture_output=True, text=True, env=ENV, timeout=300)
    return result.stdout + result.stderr


def _originals(gateway: GatewayProcess) -> dict[str, Path]:
    return {str(pydicom.dcmread(p).SOPInstanceUID): p for p in gateway.files}  # type: ignore[attr-defined]


def _assert_exact(received: Path, originals: dict[str, Path], same_bytes: bool = True) -> None:
    """Element by element always; byte for byte where the receiving tool keeps the encoding
    it was sent (getscu re-encodes sequence lengths when it writes its files)."""
    files = sorted(received.iterdir())
    assert len(files) == len(originals)
    for f in files:
        got = pydicom.dcmread(f)
        original_path = originals[str(got.SOPInstanceUID)]
        want = pydicom.dcmread(original_path)
        assert [e for e in got] == [e for e in want]  # element by element, pixel data included
        if same_bytes:
            assert dataset_bytes(f.read_bytes()) == dataset_bytes(original_path.read_bytes())


def test_find_by_original_values_for_restore_titles_only(tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    gateway, _ = stack
    original = pydicom.dcmread(gateway.files[0])
    found = findscu(gateway, tmp_path / "f1", "WS_RESTORE", "QueryRetrieveLevel=STUDY", "PatientName=doe*",
                    "PatientID", "StudyInstanceUID", "AccessionNumber", "ModalitiesInStudy")
    assert len(found) == 1
    assert found[0].PatientID == original.PatientID and found[0].StudyInstanceUID == original.StudyInstanceUID
    assert found[0].AccessionNumber == original.AccessionNumber and "CT" in found[0].ModalitiesInStudy
    by_id = findscu(gateway, tmp_path / "f2", "WS_RESTORE", "QueryRetrieveLevel=STUDY",
                    f"PatientID={original.PatientID}", "StudyDate=20240101-20241231", "StudyInstanceUID")
    assert len(by_id) == 1
    assert findscu(gateway, tmp_path / "f3", "WS_RESTORE", "QueryRetrieveLevel=STUDY", "PatientName=SMITH*") == []
    assert len(findscu(gateway, tmp_path / "f5", "WS_RESTORE", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=CT",
                       f"AccessionNumber={original.AccessionNumber}")) == 1
    assert findscu(gateway, tmp_path / "f6", "WS_RESTORE", "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR") == []
    assert findscu(gateway, tmp_path / "f7", "WS_RESTORE", "QueryRetrieveLevel=STUDY",
                   "StudyDate=20250101-") == []
    series = findscu(gateway, tmp_path / "f4", "WS_RESTORE", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={original.StudyInstanceUID}", "SeriesInstanceUID", "Modality")
    assert len(series) == 2

    assert findscu(gateway, tmp_path / "p1", "WS_PSEUDO", "QueryRetrieveLevel=STUDY", "PatientName=DOE*") == []
    pseudo = findscu(gateway, tmp_path / "p2", "WS_PSEUDO", "QueryRetrieveLevel=STUDY", "PatientName=*",
                     "PatientID", "StudyInstanceUID")
    assert len(pseudo) == 1 and pseudo[0].PatientID != original.PatientID
    assert pseudo[0].StudyInstanceUID != original.StudyInstanceUID

    assert findscu(gateway, tmp_path / "d1", "WS_DENY", "QueryRetrieveLevel=STUDY", "PatientName=*") == []
    assert "reject" in gateway.last_output.lower()  # type: ignore[attr-defined]
    audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
    assert "WS_DENY" in audit and "refused" in audit and "WS_RESTORE" in audit
    assert original.PatientID not in audit and "DOE" not in audit


def test_move_and_get_return_the_originals_exactly(tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    gateway, ports = stack
    study_uid = str(pydicom.dcmread(gateway.files[0]).StudyInstanceUID)
    output = movescu(gateway, tmp_path / "moved", "WS_RESTORE", ports["WS_RESTORE"], "WS_RESTORE", study_uid)
    # a Pending response wakes movescu before the sub-association: it looks for one only
    # between one-second waits for a response (the gateway's announcement, _announcer)
    lines = output.splitlines()
    assert lines.index("I: Received Move Response 1 (Pending)") < lines.index("I: Sub-Association Received")
    _assert_exact(tmp_path / "moved", _originals(gateway))
    getscu(gateway, tmp_path / "got", "WS_RESTORE", study_uid)
    _assert_exact(tmp_path / "got", _originals(gateway), same_bytes=False)

    pseudo_uid = findscu(gateway, tmp_path / "p", "WS_PSEUDO", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")[0]
    movescu(gateway, tmp_path / "pseudo", "WS_PSEUDO", ports["WS_PSEUDO"], "WS_PSEUDO", pseudo_uid.StudyInstanceUID)
    received = [pydicom.dcmread(p) for p in (tmp_path / "pseudo").iterdir()]
    assert len(received) == 5 and all(ds.PatientIdentityRemoved == "YES" for ds in received)
    assert all("DOE^" not in str(ds.PatientName) for ds in received)

    output = movescu(gateway, tmp_path / "elsewhere", "WS_RESTORE", free_port(), "NOT_REGISTERED", study_uid)
    assert "Refused: MoveDestinationUnknown" in output  # status 0xA801
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())
    audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
    assert "C-MOVE" in audit and "C-GET" in audit and "NOT_REGISTERED" in audit


def test_rotation_reindex_and_a_tampered_object(tmp_path: Path, orthanc: OrthancServer, stack) -> None:  # type: ignore[no-untyped-def]
    gateway, ports = stack
    first_study = str(pydicom.dcmread(gateway.files[0]).StudyInstanceUID)
    # rotate the key, restart, send a second study: both come back exactly
    gateway.stop()
    run_cli("keys", "rotate", "--keyring", str(gateway.keyring))
    gateway.start()
    from testkit import synthetic
    second = write_study(tmp_path / "study2", (2,), size=64, identity=synthetic.Identity(
        patient_name="ROE^RICHARD", patient_id="PID-2", accession="ACC2"))
    storescu(gateway.port, tmp_path / "study2")
    wait_for(lambda: "forwarded    7" in gateway.status())
    second_study = str(pydicom.dcmread(second[0]).StudyInstanceUID)
    movescu(gateway, tmp_path / "old", "WS_RESTORE", ports["WS_RESTORE"], "WS_RESTORE", first_study)
    _assert_exact(tmp_path / "old", _originals(gateway))
    movescu(gateway, tmp_path / "new", "WS_RESTORE", ports["WS_RESTORE"], "WS_RESTORE", second_study)
    _assert_exact(tmp_path / "new", {str(pydicom.dcmread(p).SOPInstanceUID): p for p in second})

    # the index is derived data: lost, then rebuilt from Orthanc and the keyring
    gateway.stop()
    with sqlite3.connect(gateway.folder / "spool" / "spool.sqlite3") as db:  # the index's table in the state database
        db.execute("DELETE FROM retrieval_index")
    run_cli("reindex", "--config", str(gateway.config_path))
    gateway.start()
    found = findscu(gateway, tmp_path / "f", "WS_RESTORE", "QueryRetrieveLevel=STUDY", "PatientName=ROE*",
                    "StudyInstanceUID")
    assert [ds.StudyInstanceUID for ds in found] == [second_study]

    # an object altered and re-sent to Orthanc over REST is refused by its filter (the tag no longer verifies)
    victim = orthanc.get("instances")[0]
    data = bytearray(orthanc.get(f"instances/{victim}/file"))
    data[-10] ^= 0xFF  # a pixel changed
    upload = requests.post(f"{orthanc.url}/instances", data=bytes(data), auth=(ORTHANC_USER, orthanc.password),
                           timeout=30)
    assert upload.status_code != 200 or upload.json().get("Status") != "Success"
    # ... and one altered inside Orthanc's storage is never sent with the restored identity
    uuid = orthanc.get(f"instances/{victim}/attachments/dicom/info")["Uuid"]
    stored = orthanc.folder / "storage" / uuid[:2] / uuid[2:4] / uuid
    stored.write_bytes(bytes(data))
    orthanc.stop()  # Orthanc caches what it read; a restart reads the altered file
    orthanc.start()
    output = movescu(gateway, tmp_path / "mixed", "WS_RESTORE", ports["WS_RESTORE"], "WS_RESTORE", first_study)
    output += movescu(gateway, tmp_path / "mixed", "WS_RESTORE", ports["WS_RESTORE"], "WS_RESTORE", second_study)
    assert "Failed" in output or "Warning" in output
    assert len(list((tmp_path / "mixed").iterdir())) == 6  # 7 objects, the altered one refused
    assert "digest" in gateway.log_path.read_text()


def test_a_move_reports_progress_and_can_be_cancelled(tmp_path: Path, orthanc: OrthancServer) -> None:
    port = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval}).start()
    try:
        files = write_study(tmp_path / "study", (40,), size=64)
        storescu(gateway.port, tmp_path / "study")
        wait_for(lambda: "forwarded    40" in gateway.status())
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)

        def move(out: Path, *extra: str) -> str:
            out.mkdir()
            result = subprocess.run(
                ["movescu", "-d", *extra, "-S", "-aet", "WS_RESTORE", "-aec", "GATEWAY", "-aem", "WS_RESTORE",
                 "--port", str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(gateway.port)],
                capture_output=True, text=True, env=ENV, timeout=300)
            return result.stdout + result.stderr

        whole = move(tmp_path / "whole")
        remaining = [int(n) for n in re.findall(r"Remaining Suboperations\s*:\s*(\d+)", whole)]
        # one announcing all 40 before the first sub-operation (see the test above), then one per object
        assert remaining[:4] == [40, 39, 38, 37] and remaining[-1] == 0
        assert len(list((tmp_path / "whole").iterdir())) == 40

        cancelled = move(tmp_path / "cancelled", "--cancel", "2")
        assert "Cancel" in cancelled
        assert 0 < len(list((tmp_path / "cancelled").iterdir())) < 40
        audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
        assert "cancelled" in audit
    finally:
        gateway.stop()
