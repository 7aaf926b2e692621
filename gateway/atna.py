"""DICOM audit messages (PS3.15 Annex A.5, RFC 3881) sent to the site's audit record repository.

Each line of the gateway's own audit log (``gateway.audit``) becomes one or two standard
messages: a refused association is a Security Alert (Node Authentication), a C-FIND a Query,
a C-MOVE/C-GET a DICOM Instances Transferred (and, where the workstation's policy restored
the originals, a DICOM Instances Accessed saying so), a quarantined series and a key rotation
Security Alerts. They travel as syslog (RFC 5424) over UDP, TCP or TLS (RFC 5425 framing).

What the messages name is what the audit log names: AE titles, addresses and the studies by
their pseudonymous UIDs. The standard's Patient participant and the query dataset are left
out on purpose: the gateway keeps no patient identity in its audit trail (README, "Audit").
The JSON log stays the durable record; the repository gets a best-effort copy from a
background thread, so a slow or absent repository never holds up a DICOM operation.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.config import AuditRepository, Config
from gateway.retrieval.vocabulary import Policy

log = logging.getLogger("gateway.atna")

# (code, codeSystemName, originalText): the DCM and RFC-3881 codes the messages use.
Code = tuple[str, str, str]
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
QUERY: Code = ("110112", "DCM", "Query")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
SECURITY_CONFIGURATION: Code = ("110129", "DCM", "Security Configuration")
OBJECT_SECURITY_CHANGED: Code = ("110135", "DCM", "Object Security Attributes Changed")
SOURCE_ROLE: Code = ("110153", "DCM", "Source Role ID")
DESTINATION_ROLE: Code = ("110152", "DCM", "Destination Role ID")
APPLICATION: Code = ("110150", "DCM", "Application")
STUDY_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
NODE_ID: Code = ("110182", "DCM", "Node ID")
URI: Code = ("12", "RFC-3881", "URI")
APPLICATION_SERVER: Code = ("4", "DCM", "Application Server process tier in a multi-tier system")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure.
_OUTCOME = {"success": "0", "cancelled": "0", "partial": "4", "refused": "4", "quarantined": "4", "failed": "8"}
# syslog: facility 10 (security/authorization), severity 5 (notice), as IHE ATNA asks.
_PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
_LOCAL = {None, "", "-", "gateway"}  # who/address of lines the gateway wrote about itself


@dataclass(frozen=True)
class Source:
    """The gateway as the audit source and as a network node in the messages."""

    audit_source_id: str
    ae_title: str
    host: str
    enterprise_site_id: str | None = None


def messages(entry: dict[str, Any], source: Source) -> list[bytes]:
    """The standard messages for one audit log line; empty for a line with no counterpart."""
    action, outcome = entry["action"], entry["outcome"]
    when = _datetime(entry.get("time"))
    indicator = _OUTCOME.get(outcome, "8")
    if action == "associate":
        subject = f"{entry['ae_title']}@{entry['address']}"
        return [_alert(when, indicator, NODE_AUTHENTICATION, source, entry, NODE_ID, subject,
                       f"association {outcome}: not a configured sender or workstation")]
    if action == "C-FIND":
        msg = _message(QUERY, "E", when, indicator, source)
        _participant(msg, entry["ae_title"], True, entry["address"], SOURCE_ROLE)
        _participant(msg, source.ae_title, False, source.host, DESTINATION_ROLE)
        _source(msg, source)
        obj = _object(msg, STUDY_ROOT_FIND, "2", "3", SOP_CLASS_UID)
        _detail(obj, "QueryRetrieveLevel", str(entry.get("level", "")))
        return [_xml(msg)]
    if action in ("C-MOVE", "C-GET"):
        return _transfer(entry, source, when, indicator)
    if action == "quarantine":
        return [_alert(when, indicator, OBJECT_SECURITY_CHANGED, source, entry, URI,
                       f"urn:oid:{entry['series']}", f"series quarantined: {entry.get('reason', '')}")]
    if action == "supersede":  # a corrected object replaced Orthanc's copy
        msg = _message(INSTANCES_ACCESSED, "U", when, indicator, source)
        _participant(msg, source.ae_title, True, source.host, APPLICATION)
        _source(msg, source)
        obj = _object(msg, str(entry.get("study", "")), "2", "3", STUDY_UID)
        _detail(obj, "Supersede", f"{entry.get('copies_replaced', 0)} earlier copy(ies) replaced by a correction")
        return [_xml(msg)]
    if action == "key-rotation":
        return [_alert(when, indicator, SECURITY_CONFIGURATION, source, entry, URI,
                       f"urn:gateway:key:{entry.get('key_id', '')}", "key-encryption key rotated")]
    return []


def _transfer(entry: dict[str, Any], source: Source, when: str, indicator: str) -> list[bytes]:
    """C-MOVE/C-GET: the gateway is the source, the destination receives; a C-MOVE's
    requestor is a third participant. A restore adds an Accessed message for the originals."""
    to = str(entry.get("to") or entry.get("destination") or entry["ae_title"])
    studies = [str(s) for s in entry.get("studies", [])]
    restored = entry.get("policy") == Policy.RESTORE and int(entry.get("completed", 0) or 0) > 0

    def build(event: Code, action_code: str) -> bytes:
        msg = _message(event, action_code, when, indicator, source)
        _participant(msg, source.ae_title, False, source.host, SOURCE_ROLE)
        requestor_is_destination = to == entry["ae_title"]
        _participant(msg, to, requestor_is_destination, entry["address"] if requestor_is_destination else None,
                     DESTINATION_ROLE)
        if not requestor_is_destination:
            _participant(msg, entry["ae_title"], True, entry["address"], None)
        _source(msg, source)
        for uid in studies:
            obj = _object(msg, uid, "2", "3", STUDY_UID)
            if event is INSTANCES_ACCESSED:
                _detail(obj, "Restore", "original identity restored and verified against its digest")
                ET.SubElement(obj, "Anonymized").text = "false"
        return _xml(msg)

    out = [build(INSTANCES_TRANSFERRED, "R")]
    if restored:
        out.append(build(INSTANCES_ACCESSED, "R"))
    return out


def _alert(when: str, indicator: str, kind: Code, source: Source, entry: dict[str, Any], id_type: Code,
           subject: str, description: str) -> bytes:
    msg = _message(SECURITY_ALERT, "E", when, indicator, source, kind)
    _participant(msg, source.ae_title, False, source.host, APPLICATION)
    if entry.get("ae_title") not in _LOCAL:
        address = entry.get("address")
        _participant(msg, str(entry["ae_title"]), True, None if address in _LOCAL else address, None)
    _source(msg, source)
    obj = _object(msg, subject, "2", "13", id_type)
    _detail(obj, "Alert Description", description)
    return _xml(msg)


def _message(event: Code, action_code: str, when: str, indicator: str, source: Source,
             event_type: Code | None = None) -> ET.Element:
    msg = ET.Element("AuditMessage")
    ident = ET.SubElement(msg, "EventIdentification", EventActionCode=action_code, EventDateTime=when,
                          EventOutcomeIndicator=indicator)
    _code(ident, "EventID", event)
    if event_type is not None:
        _code(ident, "EventTypeCode", event_type)
    return msg


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _participant(msg: ET.Element, user: str, requestor: bool, address: str | None, role: Code | None) -> None:
    attrs = {"UserID": user, "UserIsRequestor": "true" if requestor else "false"}
    if address:
        attrs |= {"NetworkAccessPointID": address, "NetworkAccessPointTypeCode": _access_point_type(address)}
    participant = ET.SubElement(msg, "ActiveParticipant", attrs)
    if role is not None:
        _code(participant, "RoleIDCode", role)


def _access_point_type(address: str) -> str:
    """RFC 3881: 2 is an IP address, 1 a machine name."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        return "2"
    except OSError:
        return "1"


def _source(msg: ET.Element, source: Source) -> None:
    attrs = {"AuditSourceID": source.audit_source_id}
    if source.enterprise_site_id:
        attrs["AuditEnterpriseSiteID"] = source.enterprise_site_id
    _code(ET.SubElement(msg, "AuditSourceIdentification", attrs), "AuditSourceTypeCode", APPLICATION_SERVER)


def _object(msg: ET.Element, object_id: str, type_code: str, role: str, id_type: Code) -> ET.Element:
    obj = ET.SubElement(msg, "ParticipantObjectIdentification", ParticipantObjectID=object_id,
                        ParticipantObjectTypeCode=type_code, ParticipantObjectTypeCodeRole=role)
    _code(obj, "ParticipantObjectIDTypeCode", id_type)
    return obj


def _detail(obj: ET.Element, kind: str, value: str) -> None:
    ET.SubElement(obj, "ParticipantObjectDetail", type=kind, value=base64.b64encode(value.encode()).decode())


def _xml(msg: ET.Element) -> bytes:
    return ET.tostring(msg, encoding="unicode").encode()  # one line: one syslog MSG


def _datetime(stamp: str | None) -> str:
    """The audit log's local time with offset, as xsd:dateTime (UTC now if it is missing)."""
    if stamp:
        try:
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").isoformat()
        except ValueError:
            pass
    return datetime.now(UTC).isoformat(timespec="seconds")


def syslog_frame(payload: bytes, hostname: str, app_name: str = "gateway") -> bytes:
    """One RFC 5424 message: header, no structured data, the XML as MSG."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{_PRI}>1 {stamp} {hostname[:255] or '-'} {app_name} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + payload


class SyslogSender:
    """Sends frames to one repository; TCP and TLS use octet counting (RFC 5425/6587)."""

    def __init__(self, repo: AuditRepository) -> None:
        self.repo = repo
        self._sock: socket.socket | None = None

    def send(self, frame: bytes) -> None:
        if self.repo.transport == "udp":
            with socket.socket(_family(self.repo.host), socket.SOCK_DGRAM) as sock:
                sock.sendto(frame, (self.repo.host, self.repo.port))
            return
        data = str(len(frame)).encode() + b" " + frame
        for attempt in (1, 2):  # a repository that closed an idle connection gets one reconnect
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(data)
                return
            except OSError:
                self.close()
                if attempt == 2:
                    raise

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.repo.host, self.repo.port), timeout=self.repo.timeout_seconds)
        if self.repo.transport == "tls":
            cafile = str(self.repo.ca_certificates) if self.repo.ca_certificates else None
            context = ssl.create_default_context(cafile=cafile)
            if self.repo.certificate is not None:
                context.load_cert_chain(str(self.repo.certificate), str(self.repo.private_key))
            sock = context.wrap_socket(sock, server_hostname=self.repo.server_name or self.repo.host)
        return sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _family(host: str) -> socket.AddressFamily:
    return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]


class AuditForwarder:
    """Turns audit log lines into messages and sends them from one background thread."""

    def __init__(self, repo: AuditRepository, source: Source, sender: SyslogSender | None = None) -> None:
        self.source = source
        self.sender = sender or SyslogSender(repo)
        self.hostname = socket.gethostname()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._run, name="atna", daemon=True)
        self._thread.start()
        self.failures = 0

    def __call__(self, entry: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:  # the JSON log has the line; the repository misses it
            self.failures += 1
            log.warning("audit repository: backlog full, message dropped (the local audit log keeps it)")

    def _run(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                self._deliver(messages(entry, self.source))
            except Exception as exc:  # noqa: BLE001 - never take the thread down; the log keeps the line
                self.failures += 1
                log.warning("audit repository unreachable, %s message not sent (%s)", entry.get("action"),
                            type(exc).__name__)
            finally:
                self._queue.task_done()

    def _deliver(self, payloads: Iterable[bytes]) -> None:
        for payload in payloads:
            self.sender.send(syslog_frame(payload, self.hostname))

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._queue.put(None)
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
        self.sender.close()


def forwarder_for(config: Config) -> AuditForwarder | None:
    """The forwarder a configuration asks for (``audit_repository``), or None."""
    repo = config.audit_repository
    if repo is None:
        return None
    listen = config.listener
    source = Source(audit_source_id=repo.audit_source_id or listen.ae_title, ae_title=listen.ae_title,
                    host=listen.host, enterprise_site_id=repo.enterprise_site_id)
    return AuditForwarder(repo, source)
