"""TLS settings of the legs beyond the listener: C-MOVE destinations, Orthanc, the status
endpoint (validation, the start-time checks, the status endpoint's HTTPS for real)."""

from __future__ import annotations

import logging
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import ConfigError, Orthanc, StatusHttp, Tls, load_config
from gateway.forwarder import Forwarder, Refused, Unreachable
from gateway.metrics import Metrics
from gateway.spool import Spool
from gateway.status_http import StatusServer
from gateway.tls import destination_tls_args
from tests.pki import issue, site_pki

BASE = """
senders: [{ae_title: CT1}]
orthanc: {url: "http://127.0.0.1:8042", username: gw, password: pw}
keyring: keys.json
spool: {path: spool}
routes: [{name: all, plugin: none}]
"""
RESTORE_WS = "retrieval:\n  workstations: [{ae_title: WS, policy: restore}]\n"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + text)
    return path


def test_a_restore_destination_without_tls_is_refused_at_start_unless_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clear = RESTORE_WS + "  destinations: [{ae_title: WS, owners: [WS], host: 10.0.0.5, port: 104}]\n"
    with pytest.raises(ConfigError, match=r"retrieval.*destinations\.0 \(WS\).*allow_cleartext_originals"):
        load_config(_config(tmp_path, clear))
    assert cli.main(["serve", "--config", str(tmp_path / "gw.yaml")]) == 2  # nothing started
    # Owned by a pseudonymized workstation only protected data can go there: no TLS needed.
    load_config(_config(tmp_path, clear.replace("policy: restore", "policy: pseudonymized")))

    allowed = load_config(_config(tmp_path, clear.replace("port: 104", "port: 104, allow_cleartext_originals: true")))
    with caplog.at_level(logging.WARNING):
        cli._check_legs(allowed, serving=True)
    assert "WS (10.0.0.5:104) receives restored originals WITHOUT TLS" in caplog.text


@pytest.mark.parametrize(("destination", "message"), [
    ("{ae_title: WS, owners: [WS], host: h, port: 1, tls: true, ca_certificates: ca.crt}", "certificate_subject"),
    ("{ae_title: WS, owners: [WS], host: h, port: 1, tls: true, certificate_subject: ws}", "ca_certificates"),
    ("{ae_title: WS, owners: [WS], host: h, port: 1, ca_certificates: ca.crt, allow_cleartext_originals: true}", "tls: true"),
    ("{ae_title: WS, owners: [WS], host: h, port: 1, tls: true, ca_certificates: ca.crt, certificate_subject: ws, "
     "client_certificate: gw.crt}", "together"),
])
def test_destination_tls_settings_must_fit_together(tmp_path: Path, destination: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, RESTORE_WS + f"  destinations: [{destination}]\n"))


def test_destination_tls_files_are_relative_to_the_config_and_checked_at_start(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    issue(tmp_path / "pki", "site-ca", None, ca=True)
    text = RESTORE_WS + ("  destinations: [{ae_title: WS, owners: [WS], host: 127.0.0.1, port: 2762, tls: true, "
                         "ca_certificates: pki/site-ca.crt, certificate_subject: ws}]\n")
    config = load_config(_config(tmp_path, text))
    context, host = destination_tls_args(config.retrieval.destinations[0])  # type: ignore[misc]
    assert host == "127.0.0.1" and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    config = load_config(_config(tmp_path, text.replace("pki/site-ca.crt", "pki/missing.crt")))
    with pytest.raises(ConfigError, match=r"destinations\.0 \(WS\): TLS files not usable"):
        cli._check_legs(config, serving=True)


@pytest.mark.parametrize(("orthanc", "message"), [
    ('{url: "http://10.0.0.9:8042", username: gw, password: pw, ca_certificates: ca.crt}', "https://"),
    ('{url: "https://10.0.0.9:8042", username: gw, password: pw, client_certificate: gw.crt}', "together"),
    ('{url: "10.0.0.9:8042", username: gw, password: pw}', "http:// or https://"),
])
def test_orthanc_tls_settings_must_fit_the_url(tmp_path: Path, orthanc: str, message: str) -> None:
    text = BASE.replace('{url: "http://127.0.0.1:8042", username: gw, password: pw}', orthanc)
    (tmp_path / "gw.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "gw.yaml")


def test_check_config_refuses_an_orthanc_without_https_listening(tmp_path: Path) -> None:
    text = BASE.replace('"http://127.0.0.1:8042"', '"https://127.0.0.1:9"')
    (tmp_path / "gw.yaml").write_text(text)
    with pytest.raises(ConfigError, match="no TLS connection to 127.0.0.1:9"):
        cli._check_legs(load_config(tmp_path / "gw.yaml"), serving=False)
    cli._check_legs(load_config(tmp_path / "gw.yaml"), serving=True)  # serving: logged, spool keeps objects
    (tmp_path / "gw.yaml").write_text(text.replace("password: pw", "password: pw, ca_certificates: missing.crt"))
    with pytest.raises(ConfigError, match="cannot use the CA bundle"):  # a file problem stops even serving
        cli._check_legs(load_config(tmp_path / "gw.yaml"), serving=True)
    with pytest.raises(Unreachable, match="TLS files for Orthanc not usable"):  # deleted while running: retried
        Forwarder(load_config(tmp_path / "gw.yaml").orthanc).send(b"DICM")


def test_the_status_endpoint_binds_beyond_loopback_only_with_client_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"status_http: .*'0.0.0.0' is not loopback"):
        load_config(_config(tmp_path, "status_http: {host: 0.0.0.0}\n"))
    server_only = "status_http: {host: 0.0.0.0, tls: {certificate: a.crt, private_key: a.key}}\n"
    with pytest.raises(ConfigError, match="require_client_certificate"):
        load_config(_config(tmp_path, server_only))
    config = load_config(_config(tmp_path, "status_http: {host: 0.0.0.0, tls: {certificate: a.crt, private_key: a.key,"
                                           " ca_certificates: ca.crt, require_client_certificate: true}}\n"))
    assert config.status_http.tls is not None and config.status_http.tls.certificate == tmp_path / "a.crt"
    load_config(_config(tmp_path, "status_http: {host: '::1'}\n"))
    load_config(_config(tmp_path, "status_http: {host: 0.0.0.0, allow_plaintext: true}\n"))  # opted in, warned


def test_the_status_endpoint_serves_https_only_to_clients_of_the_site_ca(tmp_path: Path) -> None:
    pki = site_pki(tmp_path / "pki", "gateway", "monitor", strangers=("stranger",))
    settings = StatusHttp(host="127.0.0.1", port=0, tls=Tls(
        certificate=pki / "gateway.crt", private_key=pki / "gateway.key", ca_certificates=pki / "site-ca.crt",
        require_client_certificate=True))
    server = StatusServer(settings, Spool(tmp_path / "spool"), Metrics())
    server.start()

    def get(client: str | None) -> int:
        ctx = ssl.create_default_context(cafile=str(pki / "site-ca.crt"))
        if client:
            ctx.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
        with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/status", context=ctx, timeout=10) as response:
            return int(response.status)

    try:
        assert get("monitor") == 200
        for client in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
                get(client)
        assert get("monitor") == 200  # refused clients did not take the server down
    finally:
        server.stop()


def test_the_forwarder_reports_why_tls_with_orthanc_failed_without_retrying_inside_the_request(tmp_path: Path) -> None:
    """An https server that wants client certificates of the site CA stands in for Orthanc."""
    pki = site_pki(tmp_path / "pki", "orthanc", "gateway")
    issue(pki, "other-ca", None, ca=True)
    server = StatusServer(StatusHttp(host="127.0.0.1", port=0, tls=Tls(
        certificate=pki / "orthanc.crt", private_key=pki / "orthanc.key", ca_certificates=pki / "site-ca.crt",
        require_client_certificate=True)), Spool(tmp_path / "spool"), Metrics())
    server.start()

    def send(ca: str, client: bool) -> str:
        settings = Orthanc(url=f"https://127.0.0.1:{server.port}", username="gw", password="pw", timeout_seconds=10,
                           ca_certificates=pki / f"{ca}.crt",
                           client_certificate=pki / "gateway.crt" if client else None,
                           client_private_key=pki / "gateway.key" if client else None)
        with pytest.raises(Unreachable) as info:
            Forwarder(settings).send(b"DICM")
        return str(info.value)

    try:
        started = time.monotonic()
        assert "Orthanc's certificate is not trusted (self-signed certificate in certificate chain)" in send(
            "other-ca", client=True)
        assert "TLS with Orthanc failed" in send("site-ca", client=False)
        assert time.monotonic() - started < 5  # not urllib3's ten retries with backoff
        # Right CA and client certificate: TLS passes, and the stand-in's 405 is the answer.
        with pytest.raises(Refused, match="HTTP 405"):
            Forwarder(Orthanc(url=f"https://127.0.0.1:{server.port}", username="gw", password="pw",
                              ca_certificates=pki / "site-ca.crt", client_certificate=pki / "gateway.crt",
                              client_private_key=pki / "gateway.key")).send(b"")
    finally:
        server.stop()
