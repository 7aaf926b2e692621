"""Hardening through the running service: TLS, the status endpoint, non-image objects."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.pki import site_pki

ENV = dict(os.environ, TCP_NODELAY="1")


def _tls_storescu(port: int, folder: Path, pki: Path, who: str, calling: str = "MODALITY") -> str:
    result = subprocess.run(
        ["storescu", "+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt"), "+cf", str(pki / "site-ca.crt"),
         "-aet", calling, "-aec", "GATEWAY", "127.0.0.1", str(port), str(folder), "+sd"],
        capture_output=True, text=True, env=ENV, timeout=120)
    return result.stdout + result.stderr


def test_dicom_tls_checks_certificate_ae_title_and_address_together(tmp_path: Path, orthanc: OrthancServer) -> None:
    pki = site_pki(tmp_path / "pki", "gateway", "ct-scanner", "other-device", "reading-room",
                   strangers=("rogue",))  # rogue: not signed by the site's CA
    tls = {"certificate": str(pki / "gateway.crt"), "private_key": str(pki / "gateway.key"),
           "ca_certificates": str(pki / "site-ca.crt"), "require_client_certificate": True}
    retrieval = {"workstations": [{"ae_title": "WS", "policy": "restore", "certificate_subject": "reading-room"}]}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval, "listener": {
        "ae_title": "GATEWAY", "host": "127.0.0.1", "port": orthanc.gateway_port, "tls": tls}},
        senders=[{"ae_title": "MODALITY", "certificate_subject": "ct-scanner"}]).start()
    try:
        write_study(tmp_path / "study", (2,), size=64)
        plain = storescu(gateway.port, tmp_path / "study", check=False)
        assert plain.returncode != 0
        rogue = _tls_storescu(gateway.port, tmp_path / "study", pki, "rogue")
        assert "Association Request Failed" in rogue  # the handshake fails: no trusted certificate
        wrong_subject = _tls_storescu(gateway.port, tmp_path / "study", pki, "other-device")
        assert "Association Rejected" in wrong_subject
        assert orthanc.get("instances") == []

        good = _tls_storescu(gateway.port, tmp_path / "study", pki, "ct-scanner")
        assert "E:" not in good and "F:" not in good, good
        wait_for(lambda: len(orthanc.get("instances")) == 2)

        def find(who: str) -> str:  # the query/retrieve side shares the listener's TLS
            out = tmp_path / f"find-{who}"
            out.mkdir()
            result = subprocess.run(
                ["findscu", "+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt"), "+cf", str(pki / "site-ca.crt"),
                 "-S", "-X", "-od", str(out), "-aet", "WS", "-aec", "GATEWAY", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", "PatientName=DOE*", "-k", "StudyInstanceUID", "127.0.0.1", str(gateway.port)],
                capture_output=True, text=True, env=ENV, timeout=120)
            return result.stdout + result.stderr + str(len(list(out.glob("rsp*.dcm"))))

        assert find("reading-room").endswith("1")
        assert "Association Rejected" in find("ct-scanner")  # right CA, wrong subject for WS
    finally:
        gateway.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_status_endpoint_shows_queues_quarantine_and_metrics_without_identity(tmp_path: Path,
                                                                            orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"listener": {
        "ae_title": "GATEWAY", "host": "127.0.0.1", "port": orthanc.gateway_port, "non_image": "quarantine"}}).start()
    try:
        write_study(tmp_path / "study", (3,), size=64)
        storescu(gateway.port, tmp_path / "study")
        report = tmp_path / "report"
        report.mkdir()
        _encapsulated_pdf().save_as(report / "report.dcm", enforce_file_format=True)
        storescu(gateway.port, report)
        wait_for(lambda: json.loads(_get(f"http://127.0.0.1:{gateway.status_port}/status")[1])
                 ["objects_by_state"]["forwarded"] == 3)
        wait_for(lambda: json.loads(_get(f"http://127.0.0.1:{gateway.status_port}/status")[1])["quarantined_objects"])
        code, body = _get(f"http://127.0.0.1:{gateway.status_port}/status")
        status = json.loads(body)
        assert code == 200 and status["forward_backlog"] == 0
        assert "non-image" in status["last_errors"][0]["reason"]
        code, metrics = _get(f"http://127.0.0.1:{gateway.status_port}/metrics")
        assert code == 200
        assert 'gateway_c_store_total{outcome="success"} 4.0' in metrics
        assert 'gateway_spool_objects{state="quarantined"} 1.0' in metrics
        assert _get(f"http://127.0.0.1:{gateway.status_port}/nothing")[0] == 404
        request = urllib.request.Request(f"http://127.0.0.1:{gateway.status_port}/status", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
        for text in (body, metrics):
            for value in ("DOE", synthetic.Identity().patient_id, "REPORT TEXT"):
                assert value not in text.upper()
        assert len(orthanc.get("instances")) == 3  # the report never left
    finally:
        gateway.stop()


def test_non_image_objects_are_refused_by_default(tmp_path: Path, orthanc: OrthancServer,
                                                  gateway: GatewayProcess) -> None:
    report = tmp_path / "report"
    report.mkdir()
    _encapsulated_pdf().save_as(report / "report.dcm", enforce_file_format=True)
    result = storescu(gateway.port, report, check=False)
    assert "Refused" in result.stdout + result.stderr
    assert "not an image" in gateway.log_path.read_text()
    assert orthanc.get("instances") == []


def _encapsulated_pdf() -> pydicom.Dataset:
    ident = synthetic.Identity()
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = ident.patient_name, ident.patient_id
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4 REPORT TEXT for " + ident.patient_name.encode() + b"\n%%EOF"
    return ds
