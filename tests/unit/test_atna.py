"""DICOM audit messages: each audit log line's message validates against PS3.15 A.5.1."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from gateway.atna import AuditForwarder, Source, messages, syslog_frame
from gateway.audit import AuditLog
from gateway.config import AuditRepository, ConfigError, load_config

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[2] / "gateway" / "data" / "dicom_audit_message.rng")))
SOURCE = Source(audit_source_id="GW-SITE", ae_title="GATEWAY", host="127.0.0.1", enterprise_site_id="HOSPITAL")


def entry(action: str, outcome: str, **what: Any) -> dict[str, Any]:
    return {"time": "2026-12-02T01:02:03+0100", "ae_title": "WS1", "address": "10.0.0.7", "action": action,
            "outcome": outcome, **what}


CASES = {
    "refused association": entry("associate", "refused", policy=None),
    "query": entry("C-FIND", "success", level="STUDY", policy="restore", matches=1, studies=["2.25.1"]),
    "refused query": entry("C-FIND", "refused", level="", policy=None),
    "restore by C-GET": entry("C-GET", "success", to="WS1", policy="restore", completed=2, failed=0,
                              studies=["2.25.1", "2.25.2"]),
    "pseudonymized C-MOVE": entry("C-MOVE", "partial", to="WS2", policy="pseudonymized", completed=1, failed=1,
                                  studies=["2.25.1"]),
    "refused C-MOVE": entry("C-MOVE", "refused", policy="deny", destination="NOWHERE"),
    "quarantine": {**entry("quarantine", "quarantined", series="2.25.9", route="ct", objects=3,
                           reason="gate: identifying value in (0010,0010)"), "ae_title": "gateway", "address": "-"},
    "supersede": {**entry("supersede", "success", study="2.25.5", instance="abc", copies_replaced=1),
                  "ae_title": "gateway", "address": "-"},
    "key rotation": {**entry("key-rotation", "success", key_id="kek-0002"), "ae_title": "operator"},
}
EVENTS = {"refused association": ["110113"], "query": ["110112"], "refused query": ["110112"],
          "restore by C-GET": ["110104", "110103"], "pseudonymized C-MOVE": ["110104"], "refused C-MOVE": ["110104"],
          "quarantine": ["110113"], "supersede": ["110103"], "key rotation": ["110113"]}


@pytest.mark.parametrize("case", CASES)
def test_every_audited_event_is_a_valid_dicom_audit_message(case: str) -> None:
    produced = messages(CASES[case], SOURCE)
    assert [etree.fromstring(m).find("EventIdentification/EventID").get("csd-code") for m in produced] == EVENTS[case]
    for message in produced:
        doc = etree.fromstring(message)
        assert SCHEMA.validate(doc), SCHEMA.error_log
        assert doc.find("AuditSourceIdentification").get("AuditSourceID") == "GW-SITE"
        assert b"\n" not in message  # one syslog MSG each


def test_outcomes_and_participants_say_who_did_what() -> None:
    refused = etree.fromstring(messages(CASES["refused association"], SOURCE)[0])
    assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert refused.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"  # Node Authentication
    requestor = refused.find("ActiveParticipant[@UserIsRequestor='true']")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("WS1", "10.0.0.7")

    move = etree.fromstring(messages(CASES["pseudonymized C-MOVE"], SOURCE)[0])
    users = {p.get("UserID"): p for p in move.findall("ActiveParticipant")}
    assert set(users) == {"GATEWAY", "WS2", "WS1"}  # source, destination, requestor
    assert users["WS1"].get("UserIsRequestor") == "true" and users["WS2"].get("UserIsRequestor") == "false"
    assert move.find("EventIdentification").get("EventOutcomeIndicator") == "4"

    transferred, accessed = (etree.fromstring(m) for m in messages(CASES["restore by C-GET"], SOURCE))
    assert [o.get("ParticipantObjectID") for o in accessed.findall("ParticipantObjectIdentification")] == ["2.25.1",
                                                                                                         "2.25.2"]
    assert all(o.findtext("Anonymized") == "false" for o in accessed.findall("ParticipantObjectIdentification"))
    assert transferred.find("EventIdentification").get("EventDateTime") == "2026-12-02T01:02:03+01:00"


def test_lines_about_the_gateway_itself_name_only_the_gateway() -> None:
    alert = etree.fromstring(messages(CASES["quarantine"], SOURCE)[0])
    assert [p.get("UserID") for p in alert.findall("ActiveParticipant")] == ["GATEWAY"]


def test_a_retrieval_that_sent_nothing_is_no_restore() -> None:
    nothing = entry("C-GET", "partial", to="WS1", policy="restore", completed=0, failed=2, studies=["2.25.1"])
    assert len(messages(nothing, SOURCE)) == 1


def test_lines_without_a_standard_event_send_nothing() -> None:
    assert messages(entry("something-else", "success"), SOURCE) == []


def test_the_schema_refuses_what_the_standard_refuses() -> None:
    good = etree.fromstring(messages(CASES["query"], SOURCE)[0])
    no_source = etree.fromstring(messages(CASES["query"], SOURCE)[0])
    no_source.remove(no_source.find("AuditSourceIdentification"))
    bad_outcome = etree.fromstring(messages(CASES["query"], SOURCE)[0])
    bad_outcome.find("EventIdentification").set("EventOutcomeIndicator", "3")
    no_participant = etree.fromstring(messages(CASES["query"], SOURCE)[0])
    for p in no_participant.findall("ActiveParticipant"):
        no_participant.remove(p)
    assert SCHEMA.validate(good)
    assert not any(SCHEMA.validate(doc) for doc in (no_source, bad_outcome, no_participant))


def test_syslog_frame_is_rfc5424() -> None:
    frame = syslog_frame(b"<AuditMessage/>", "gw-host")
    match = re.fullmatch(rb"<85>1 (\S+) gw-host gateway (\d+) IHE\+RFC-3881 - (.*)", frame)
    assert match and match.group(3) == b"<AuditMessage/>"
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", match.group(1))


def test_an_unreachable_repository_never_fails_the_operation(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    forward = AuditForwarder(AuditRepository(host="127.0.0.1", port=port, transport="tcp", timeout_seconds=1), SOURCE)
    audit = AuditLog(tmp_path / "audit.jsonl", forward=forward)
    audit.record("WS1", "10.0.0.7", "associate", "refused", policy=None)
    forward.close()
    assert forward.failures == 1
    assert [line["action"] for line in audit.lines()] == ["associate"]  # the local record is kept


def _config(tmp_path: Path, repository: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "senders": [{"ae_title": "MODALITY"}], "keyring": "keyring.json", "spool": {"path": "spool"},
        "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "routes": [{"name": "all"}], "audit_repository": repository}))
    return path


def test_repository_configuration_is_checked(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, {"host": "arr.example", "port": 6514, "transport": "tls",
                                            "ca_certificates": "pki/ca.crt"}))
    assert config.audit_repository is not None
    assert config.audit_repository.ca_certificates == (tmp_path / "pki" / "ca.crt").resolve()
    with pytest.raises(ConfigError, match="audit_repository: .*transport: tls"):
        load_config(_config(tmp_path, {"host": "arr.example", "transport": "udp", "ca_certificates": "ca.crt"}))
    with pytest.raises(ConfigError, match="certificate.*private_key"):
        load_config(_config(tmp_path, {"host": "arr.example", "transport": "tls", "certificate": "gw.crt"}))
    with pytest.raises(ConfigError, match="audit_repository.transport"):
        load_config(_config(tmp_path, {"host": "arr.example", "transport": "http"}))
