"""Every leg that carries identity over TLS, with real peers: the gateway forwards to and
reads from an Orthanc behind HTTPS (Orthanc's own ``SslEnabled``, client certificates
required) and sends restored originals to dcmtk ``storescp +tls`` destinations; a peer whose
certificate does not check out receives nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from gateway.original import dataset_bytes
from testkit.localstack import GatewayProcess, OrthancServer, free_port, run_cli, storescu, wait_port
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.pki import issue, site_pki

ENV = dict(os.environ, TCP_NODELAY="1")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """The site CA with the gateway, Orthanc and two workstations; a rogue CA with a
    workstation of its own."""
    folder = site_pki(tmp_path / "pki", "gateway", "orthanc", "reading-room", "ct-scanner")
    issue(folder, "rogue-reading-room", issue(folder, "rogue-ca", None, ca=True))
    return folder


@pytest.fixture
def https_orthanc(tmp_path: Path, pki: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", gateway_port=free_port(), https_pem=pki / "orthanc.pem",
                           https_ca=pki / "site-ca.crt", https_client_ca=pki / "site-ca.crt",
                           https_client=(pki / "gateway.crt", pki / "gateway.key")).start()
    yield server
    server.stop()


def _orthanc_section(orthanc: OrthancServer, pki: Path, ca: str = "site-ca") -> dict[str, str]:
    return {"url": orthanc.url, "username": "gateway", "password": orthanc.password,
            "ca_certificates": str(pki / f"{ca}.crt"), "client_certificate": str(pki / "gateway.crt"),
            "client_private_key": str(pki / "gateway.key")}


def _tls_destination(ae: str, port: int, pki: Path, subject: str) -> dict[str, object]:
    return {"ae_title": ae, "host": "127.0.0.1", "port": port, "owners": ["WS"], "tls": True, "ca_certificates": str(pki / "site-ca.crt"),
            "certificate_subject": subject, "client_certificate": str(pki / "gateway.crt"),
            "client_private_key": str(pki / "gateway.key")}


def _storescp(ae: str, port: int, out: Path, pki: Path, who: str) -> subprocess.Popen[bytes]:
    """A workstation's receiver that speaks DICOM TLS only and wants the gateway's
    certificate to chain to the site CA (dcmtk's default ``--require-peer-cert``)."""
    out.mkdir(parents=True)
    process = subprocess.Popen(
        ["storescp", "+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt"), "+cf", str(pki / "site-ca.crt"),
         "-aet", ae, "-od", str(out), str(port)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return process


def _movescu(gateway: GatewayProcess, destination: str, study_uid: str) -> str:
    result = subprocess.run(
        ["movescu", "-v", "-S", "-aet", "WS", "-aec", "GATEWAY", "-aem", destination,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(gateway.port)],
        capture_output=True, text=True, env=ENV, timeout=120)
    return result.stdout + result.stderr


def test_originals_travel_only_over_tls_to_the_destination_whose_certificate_checks_out(
        tmp_path: Path, pki: Path, https_orthanc: OrthancServer) -> None:
    peers = {"WS_TLS": ("reading-room", "reading-room"),             # AE: (certificate presented, subject expected)
             "WS_ROGUE": ("rogue-reading-room", "rogue-reading-room"),  # not signed by the site CA
             "WS_OTHER": ("ct-scanner", "reading-room")}             # site CA, but another device
    ports = {ae: free_port() for ae in peers}
    receivers = [_storescp(ae, ports[ae], tmp_path / ae, pki, who) for ae, (who, _) in peers.items()]
    retrieval = {"workstations": [{"ae_title": "WS", "policy": "restore"}],
                 "destinations": [_tls_destination(ae, ports[ae], pki, subject) for ae, (_, subject) in peers.items()]}
    gateway = GatewayProcess(tmp_path / "gateway", https_orthanc, extra={
        "retrieval": retrieval, "orthanc": _orthanc_section(https_orthanc, pki)})
    gateway.write_config()
    assert "OK" in run_cli("check-config", "--config", str(gateway.config_path)).stdout  # Orthanc's chain checks out
    gateway.start()
    try:
        files = write_study(tmp_path / "study", (3,), size=64)
        storescu(gateway.port, tmp_path / "study")
        wait_for(lambda: len(https_orthanc.get("instances")) == 3)  # forwarded over https, client certificate
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)

        assert "Final Move Response (Success)" in _movescu(gateway, "WS_TLS", study_uid)
        originals = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in files}
        received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in (tmp_path / "WS_TLS").iterdir()}
        assert received.keys() == originals.keys()
        for uid, path in received.items():  # the originals, identity included, exactly
            assert dataset_bytes(path.read_bytes()) == dataset_bytes(originals[uid].read_bytes())

        for ae in ("WS_ROGUE", "WS_OTHER"):
            output = _movescu(gateway, ae, study_uid)
            assert "Final Move Response (Refused: MoveDestinationUnknown)" in output, output[-2000:]
            assert list((tmp_path / ae).iterdir()) == []
        log = gateway.log_path.read_text()
        assert "certificate verify failed" in log  # the rogue CA's certificate
        assert "names 'ct-scanner', not the configured certificate_subject 'reading-room'" in log
        assert gateway.process is not None and gateway.process.poll() is None
    finally:
        gateway.stop()
        for receiver in receivers:
            receiver.terminate()
            receiver.wait(10)


def test_an_orthanc_whose_certificate_does_not_chain_to_the_configured_ca_gets_nothing(
        tmp_path: Path, pki: Path, https_orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", https_orthanc, port=free_port(), extra={
        "orthanc": _orthanc_section(https_orthanc, pki, ca="rogue-ca")})
    gateway.write_config()
    with pytest.raises(RuntimeError, match="Orthanc's certificate is not trusted"):
        run_cli("check-config", "--config", str(gateway.config_path))
    gateway.start()  # serving anyway: modalities are not turned away, objects wait in the spool
    try:
        write_study(tmp_path / "study", (2,), size=64)
        assert storescu(gateway.port, tmp_path / "study").returncode == 0
        wait_for(lambda: "certificate is not trusted" in gateway.status())
        assert "protected    2" in gateway.status()  # kept, to be retried
        assert https_orthanc.get("instances") == []
        assert gateway.process is not None and gateway.process.poll() is None
    finally:
        gateway.stop()
