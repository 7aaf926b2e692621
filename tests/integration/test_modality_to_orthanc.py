"""A modality (dcmtk storescu) sends through the gateway to a real Orthanc."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from gateway.original import dataset_bytes
from testkit import synthetic
from testkit.localstack import REPO, GatewayProcess, OrthancServer, run_cli, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for

IDENTITY = synthetic.Identity()
# Every identifying value the synthetic study carries, as text.
PHI = [IDENTITY.patient_name, "DOE", "JANE", IDENTITY.patient_id, IDENTITY.birth_date, IDENTITY.accession,
       IDENTITY.institution, IDENTITY.referring, "HOUSE", "CUDDY", IDENTITY.address, IDENTITY.study_date,
       "SN-998877", "CT-ROOM-3"]


def _orthanc_instances(orthanc: OrthancServer) -> list[str]:
    return orthanc.get("instances")


def _assert_no_phi(orthanc: OrthancServer, originals: list[Path]) -> None:
    original_uids = set()
    for p in originals:
        ds = pydicom.dcmread(p)
        original_uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
    for instance in _orthanc_instances(orthanc):
        raw = orthanc.get(f"instances/{instance}/file")
        tags = str(orthanc.get(f"instances/{instance}/tags")).upper()
        for value in PHI + sorted(original_uids):
            assert value.upper() not in tags, "identity in Orthanc's tags"
            assert value.encode() not in raw, "identity in the stored file"


def test_a_study_arrives_protected_with_its_structure(tmp_path: Path, orthanc: OrthancServer,
                                                      gateway: GatewayProcess) -> None:
    files = write_study(tmp_path / "study", (4, 3), size=64)
    storescu(gateway.port, tmp_path / "study")
    wait_for(lambda: len(_orthanc_instances(orthanc)) == 7)
    studies = orthanc.get("studies")
    assert len(studies) == 1 and len(orthanc.get(f"studies/{studies[0]}/series")) == 2
    _assert_no_phi(orthanc, files)
    # What Orthanc holds restores offline, byte for byte, with the gateway's keyring.
    held = tmp_path / "held"
    held.mkdir()
    for i, instance in enumerate(_orthanc_instances(orthanc)):
        (held / f"{i}.dcm").write_bytes(orthanc.get(f"instances/{instance}/file"))
    run_cli("restore", str(held), str(tmp_path / "back"), "--keyring", str(gateway.keyring))
    restored = sorted(dataset_bytes(p.read_bytes()) for p in (tmp_path / "back").iterdir())
    assert restored == sorted(dataset_bytes(p.read_bytes()) for p in files)
    assert "forwarded    7" in gateway.status()


def test_kill_9_after_acknowledgement_loses_nothing(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=30).start()
    write_study(tmp_path / "study", (5,), size=64)
    storescu(gateway.port, tmp_path / "study")
    gateway.kill9()  # acknowledged, not yet processed (settle is 30 s)
    assert _orthanc_instances(orthanc) == []
    gateway.settle_seconds = 0.5
    gateway.start()
    wait_for(lambda: len(_orthanc_instances(orthanc)) == 5)
    # resending after the restart stores nothing twice
    storescu(gateway.port, tmp_path / "study")
    wait_for(lambda: "received     0" in gateway.status() and "protected    0" in gateway.status())
    assert len(_orthanc_instances(orthanc)) == 5
    gateway.stop()


def test_orthanc_down_then_up_gets_the_study_once(tmp_path: Path, orthanc: OrthancServer) -> None:
    orthanc.stop()
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=0.5).start()
    write_study(tmp_path / "study", (4,), size=64)
    storescu(gateway.port, tmp_path / "study")
    wait_for(lambda: "not reachable" in gateway.status(), timeout=30)
    orthanc.start()
    wait_for(lambda: len(_orthanc_instances(orthanc)) == 4, timeout=60)
    wait_for(lambda: "forwarded    4" in gateway.status())
    gateway.stop()


def test_unknown_senders_are_refused(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc,
                             senders=[{"ae_title": "MODALITY"}, {"ae_title": "FARAWAY", "host": "10.9.9.9"}]).start()
    write_study(tmp_path / "study", (1,), size=64)
    for calling in ("INTRUDER", "FARAWAY"):  # unknown title; known title from the wrong address
        result = storescu(gateway.port, tmp_path / "study", calling=calling, check=False)
        assert result.returncode != 0 and "reject" in (result.stdout + result.stderr).lower()
    assert _orthanc_instances(orthanc) == []
    gateway.stop()


def test_orthanc_refuses_identifiable_objects_sent_around_the_gateway(tmp_path: Path,
                                                                      orthanc: OrthancServer) -> None:
    write_study(tmp_path / "study", (1,), size=64)
    storescu(orthanc.dicom_port, tmp_path / "study", calling="GATEWAY", called="ORTHANC", check=False)
    assert _orthanc_instances(orthanc) == []
    assert "refused an instance that the gateway did not protect" in (orthanc.folder / "orthanc.log").read_text()


def test_a_full_spool_answers_a_failure_so_the_modality_retries(tmp_path: Path, orthanc: OrthancServer,
                                                                gateway: GatewayProcess) -> None:
    incoming = gateway.folder / "spool" / "incoming"
    shutil.rmtree(incoming)
    incoming.write_text("the disk refuses writes")
    write_study(tmp_path / "study", (1,), size=64)
    result = storescu(gateway.port, tmp_path / "study", check=False)
    assert "Refused: OutOfResources" in result.stdout + result.stderr  # status 0xA700
    assert "out-of-resources" in gateway.log_path.read_text()


def test_a_bad_config_stops_the_start_with_the_key_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("senders: []\northanc: {url: x, username: u, password: p}\nkeyring: k\nspool: {path: s}\n"
                   "routes: [{name: r}]\n")
    console = Path(sys.executable).parent / "gateway"  # the installed console command
    result = subprocess.run([str(console), "serve", "--config", str(bad)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2 and "senders" in result.stderr and "Traceback" not in result.stderr


def test_docker_compose_file_is_valid(tmp_path: Path) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"],
                                                        capture_output=True).returncode != 0:
        pytest.skip("no docker compose client here")
    result = subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_offline_protect_and_restore_round_trip(tmp_path: Path) -> None:
    files = write_study(tmp_path / "study", (3, 2), size=64)
    ring = tmp_path / "keys.json"
    run_cli("keys", "init", "--keyring", str(ring))
    run_cli("protect", str(tmp_path / "study"), str(tmp_path / "protected"), "--keyring", str(ring),
            "--option", "retain_longitudinal_modified_dates")
    protected = list((tmp_path / "protected").iterdir())
    assert len(protected) == 5 and all(b"DOE^JANE" not in p.read_bytes() for p in protected)
    run_cli("restore", str(tmp_path / "protected"), str(tmp_path / "restored"), "--keyring", str(ring))
    assert sorted(p.read_bytes() for p in (tmp_path / "restored").iterdir()) == sorted(p.read_bytes() for p in files)
    ds = pydicom.dcmread(io.BytesIO(protected[0].read_bytes()))
    assert ds.PatientIdentityRemoved == "YES"


def test_identity_in_an_unexpected_place_quarantines_the_series(tmp_path: Path, orthanc: OrthancServer,
                                                                  gateway: GatewayProcess) -> None:
    study = tmp_path / "study"
    study.mkdir()
    for i, ds in enumerate(synthetic.ct_series(3, size=64)):
        ds.ManufacturerModelName = f"set up for {IDENTITY.patient_id}"  # a kept attribute, by the profile
        ds.save_as(study / f"{i}.dcm", enforce_file_format=True)
    storescu(gateway.port, study)
    wait_for(lambda: "quarantined  3" in gateway.status())
    status = gateway.status()
    assert "PHI gate" in status and IDENTITY.patient_id not in status
    assert _orthanc_instances(orthanc) == []
    assert len(list((gateway.folder / "spool" / "quarantine").rglob("*.dcm"))) == 3


def test_the_gateway_log_carries_no_identity(tmp_path: Path, orthanc: OrthancServer,
                                             gateway: GatewayProcess) -> None:
    write_study(tmp_path / "study", (2,), size=64)
    storescu(gateway.port, tmp_path / "study")
    storescu(gateway.port, tmp_path / "study", calling="INTRUDER", check=False)
    wait_for(lambda: len(_orthanc_instances(orthanc)) == 2)
    log = gateway.log_path.read_text().upper()
    original = pydicom.dcmread(next((tmp_path / "study").iterdir()))
    for value in [*PHI, original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID]:
        assert value.upper() not in log
