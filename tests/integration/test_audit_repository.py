"""Standard audit: the gateway's audit events reach a real syslog receiver (Debian rsyslog) as
DICOM audit messages, over TCP, UDP and TLS, and validate against PS3.15 A.5.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml
from lxml import etree

from gateway.atna import AuditForwarder, Source
from gateway.audit import AuditLog
from gateway.config import AuditRepository
from testkit.localstack import GatewayProcess, OrthancServer, free_port, run_cli, storescu, wait_port
from tests.conftest import write_study
from tests.integration.conftest import HANDLED_IDENTITY, wait_for
from tests.integration.test_retrieval import getscu
from tests.pki import issue
from tests.unit.test_atna import SCHEMA

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
pytestmark = pytest.mark.skipif(not Path(RSYSLOGD).exists(), reason="rsyslog is not installed (scripts/setup installs it)")


@dataclass
class Received:
    version: str
    pri: str
    app: str
    msgid: str
    xml: etree._Element


@dataclass
class Rsyslog:
    """rsyslogd on loopback: plain TCP, UDP and TLS (openssl driver) inputs, every message
    written to one file as its parsed RFC 5424 fields."""

    folder: Path
    tcp: int = 0
    udp: int = 0
    tls: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.folder / "received.log"

    def start(self) -> Rsyslog:
        self.folder.mkdir(parents=True, exist_ok=True)
        issue(self.folder, "arr", issue(self.folder, "arr-ca", None, ca=True))
        self.tcp, self.udp, self.tls = free_port(), free_port(), free_port()
        f = self.folder
        (f / "rsyslog.conf").write_text(f"""
global(workDirectory="{f}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{self.udp}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}")
input(type="imtcp" address="127.0.0.1" port="{self.tls}" streamDriver.name="ossl" streamDriver.mode="1"
      streamDriver.authMode="anon" streamDriver.CAFile="{f}/arr-ca.crt" streamDriver.CertFile="{f}/arr.crt"
      streamDriver.KeyFile="{f}/arr.key")
template(name="fields" type="string" string="%protocol-version%|%pri%|%app-name%|%msgid%|%msg%\\n")
*.* action(type="omfile" file="{self.out}" template="fields")
""")
        log = open(f / "rsyslogd.log", "ab")
        self.process = subprocess.Popen([RSYSLOGD, "-n", "-f", str(f / "rsyslog.conf"), "-i", str(f / "rsyslogd.pid")],
                                        stdout=log, stderr=subprocess.STDOUT)
        for port in (self.tcp, self.tls):
            wait_port(port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def received(self) -> list[Received]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            version, pri, app, msgid, msg = line.split("|", 4)
            out.append(Received(version, pri, app, msgid, etree.fromstring(msg.encode())))
        return out

    def events(self, code: str) -> list[etree._Element]:
        return [r.xml for r in self.received() if r.xml.find("EventIdentification/EventID").get("csd-code") == code]


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    receiver = Rsyslog(tmp_path / "rsyslog").start()
    yield receiver
    receiver.stop()


def _valid(receiver: Rsyslog) -> list[Received]:
    received = receiver.received()
    for r in received:
        assert (r.version, r.pri, r.app, r.msgid) == ("1", "85", "gateway", "IHE+RFC-3881")
        assert SCHEMA.validate(r.xml), SCHEMA.error_log
    text = receiver.out.read_text().upper()
    assert not [v for v in HANDLED_IDENTITY if v in text]
    return received


def test_refusal_and_restore_reach_the_repository(tmp_path: Path, orthanc: OrthancServer, rsyslog: Rsyslog) -> None:
    extra = {"retrieval": {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}]},
             "audit_repository": {"host": "127.0.0.1", "port": rsyslog.tcp, "transport": "tcp",
                                  "enterprise_site_id": "SAINT-TEST"}}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra=extra).start()
    try:
        files = write_study(tmp_path / "study", (2,), size=32)
        refused = storescu(gateway.port, tmp_path / "study", calling="STRANGER", check=False)
        assert refused.returncode != 0
        storescu(gateway.port, tmp_path / "study")
        wait_for(lambda: "forwarded    2" in gateway.status())
        original_study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        getscu(gateway, tmp_path / "got", "WS_RESTORE", original_study)
        assert len(list((tmp_path / "got").iterdir())) == 2
        wait_for(lambda: rsyslog.events("110103"), timeout=20)
    finally:
        gateway.stop()
    _valid(rsyslog)
    (alert,) = rsyslog.events("110113")
    assert alert.find("ActiveParticipant[@UserIsRequestor='true']").get("UserID") == "STRANGER"
    assert alert.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "SAINT-TEST"
    (transferred,) = rsyslog.events("110104")
    (accessed,) = rsyslog.events("110103")
    users = {p.get("UserID") for p in accessed.findall("ActiveParticipant")}
    assert users == {"GATEWAY", "WS_RESTORE"}
    objects = [o.get("ParticipantObjectID") for o in accessed.findall("ParticipantObjectIdentification")]
    assert objects and original_study not in objects and all(o.startswith("2.25.") for o in objects)
    assert transferred.find("EventIdentification").get("EventOutcomeIndicator") == "0"


def test_udp_and_tls_transports_and_a_key_rotation(tmp_path: Path, rsyslog: Rsyslog) -> None:
    def config(name: str, repository: dict[str, object]) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "senders": [{"ae_title": "MODALITY"}], "keyring": "keyring.json", "spool": {"path": f"spool-{name}"},
            "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
            "routes": [{"name": "all"}], "audit_repository": repository}))
        return path

    run_cli("keys", "init", "--keyring", str(tmp_path / "keyring.json"))
    udp = config("udp", {"host": "127.0.0.1", "port": rsyslog.udp, "transport": "udp"})
    tls = config("tls", {"host": "127.0.0.1", "port": rsyslog.tls, "transport": "tls",
                         "ca_certificates": str(rsyslog.folder / "arr-ca.crt")})
    for path in (udp, tls):
        run_cli("keys", "rotate", "--keyring", str(tmp_path / "keyring.json"), "--config", str(path))
    wait_for(lambda: len(rsyslog.events("110113")) == 2, timeout=20)
    _valid(rsyslog)
    keys = sorted(a.find("ParticipantObjectIdentification").get("ParticipantObjectID") for a in rsyslog.events("110113"))
    assert keys == ["urn:gateway:key:kek-0002", "urn:gateway:key:kek-0003"]
    for alert in rsyslog.events("110113"):
        assert alert.find("EventIdentification/EventTypeCode").get("csd-code") == "110129"  # Security Configuration


def test_a_repository_with_an_untrusted_certificate_gets_nothing(tmp_path: Path, rsyslog: Rsyslog) -> None:
    """TLS that cannot be verified is not sent in the clear instead: nothing arrives, the
    local audit log keeps the line, and the operator sees a warning."""
    repo = AuditRepository(host="127.0.0.1", port=rsyslog.tls, transport="tls", timeout_seconds=2)  # system CAs only
    forward = AuditForwarder(repo, Source("GW", "GATEWAY", "127.0.0.1"))
    audit = AuditLog(tmp_path / "audit.jsonl", forward=forward)
    audit.record("STRANGER", "127.0.0.1", "associate", "refused", policy=None)
    forward.close()
    time.sleep(0.5)
    assert forward.failures == 1
    assert rsyslog.received() == []
    assert [line["ae_title"] for line in audit.lines()] == ["STRANGER"]
    assert os.path.getsize(tmp_path / "audit.jsonl") > 0
