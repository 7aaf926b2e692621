"""The admin configuration: one YAML or TOML file, validated before anything starts.

Every error names the key (dotted path) and what is wrong with it, so an administrator
can fix the file without reading code. Unknown keys are errors too: a misspelt option
silently ignored is how PHI leaks.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import dictionary_has_tag, tag_for_keyword
from pydicom.dataset import Dataset

from gateway.attribute_matching import matches
from gateway.deid.profile import OPTIONS, Profile
from gateway.retrieval.vocabulary import Policy


class ConfigError(Exception):
    """The configuration file cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(value: str) -> str:
    if not value or len(value) > 16 or not value.isascii() or "\\" in value or value != value.strip():
        raise ValueError("an AE title is 1 to 16 ASCII characters, no backslash, no leading/trailing spaces")
    return value


class Tls(_Strict):
    """TLS where the gateway is the server: the DICOM listener (storage and
    query/retrieve), the status endpoint. PEM files."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> Tls:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CA that signs the peers)")
        return self


class Listener(_Strict):
    ae_title: str = "GATEWAY"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(16, ge=1)
    max_pdu: int = Field(131072, ge=0)  # 0: unlimited
    # Non-image objects (SR, encapsulated PDF, ...): refused at C-STORE, kept in
    # quarantine for an admin, or protected like images (headers only).
    non_image: Literal["refuse", "quarantine", "protect"] = "refuse"
    # Objects that did not arrive whole (pixel data cut short, lengths past the end, broken
    # fragments): refused with a failure status so the modality sends again, or, for sites
    # that must keep everything, acknowledged and their series quarantined.
    damaged: Literal["refuse", "quarantine"] = "refuse"
    tls: Tls | None = None

    _check_ae = field_validator("ae_title")(_ae_title)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (a bind address or a URL's host)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StatusHttp(_Strict):
    """The read-only status endpoint (``/status``, ``/metrics``): loopback, or HTTPS with
    client certificates, or behind the site's proxy on loopback."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(11180, ge=0, le=65535)
    tls: Tls | None = None
    # Plain HTTP off loopback, said out loud: for a private network such as compose's, where
    # only the site's scraper can reach it. Warned about at start.
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _loopback_or_tls(self) -> StatusHttp:
        secured = self.tls is not None and self.tls.require_client_certificate
        if not is_loopback(self.host) and not secured and not self.allow_plaintext:
            raise ValueError(f"host {self.host!r} is not loopback: give tls with require_client_certificate: true, "
                             "keep it on 127.0.0.1 behind the site's proxy, or set allow_plaintext: true on a "
                             "private network")
        return self


class _Peer(_Strict):
    """A calling AE title, with the IP address and TLS certificate common name it must
    come from where those are given."""

    ae_title: str
    host: str | None = None
    certificate_subject: str | None = None

    _check_ae = field_validator("ae_title")(_ae_title)

    def matches(self, ae_title: str, address: str, subject: str | None) -> bool:
        """AE title, address and certificate checked together."""
        return (self.ae_title == ae_title and self.host in (None, address)
                and self.certificate_subject in (None, subject))


class Sender(_Peer):
    """A modality allowed to send. ``storage_commitment_port``: where it takes the
    Storage Commitment result (N-EVENT-REPORT) when its request's association has closed."""

    storage_commitment_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _port_needs_host(self) -> Sender:
        if self.storage_commitment_port is not None and self.host is None:
            raise ValueError("storage_commitment_port needs the sender's host (where to send the result)")
        return self


class Orthanc(_Strict):
    url: str
    # Further servers of the same Orthanc cluster (one PostgreSQL index, one storage area),
    # with the same credentials and TLS settings: when the one in use is down (connection
    # refused, timeout, HTTP 5xx) the next is tried, and the one that answered is kept.
    failover: list[str] = []
    username: str
    password: str | None = None
    password_file: Path | None = None
    timeout_seconds: float = Field(30, gt=0)
    # https:// only: the CA bundle Orthanc's certificate must chain to (the system's trust
    # store when absent), and the gateway's own certificate where Orthanc asks for one.
    ca_certificates: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Orthanc:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of 'password' or 'password_file'")
        return self

    @model_validator(mode="after")
    def _https_settings(self) -> Orthanc:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: give an http:// or https:// URL")
        scheme = urlsplit(self.url).scheme
        for i, other in enumerate(self.failover):
            if urlsplit(other).scheme != scheme or not urlsplit(other).hostname:
                raise ValueError(f"failover.{i} {other!r}: give a {scheme}:// URL like url's (one TLS setting "
                                 "serves them all)")
        if len({u.rstrip("/") for u in self.urls}) != len(self.urls):
            raise ValueError("failover: each Orthanc URL once, url included")
        given = [k for k in ("ca_certificates", "client_certificate", "client_private_key") if getattr(self, k)]
        if given and not self.url.startswith("https://"):
            raise ValueError(f"{', '.join(given)} only apply to an https:// url")
        if (self.client_certificate is None) != (self.client_private_key is None):
            raise ValueError("give client_certificate and client_private_key together")
        return self

    @property
    def urls(self) -> list[str]:
        """Every Orthanc of the cluster, in the order they are tried."""
        return [self.url, *self.failover]

    def secret(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        return self.password_file.read_text().strip()


class Spool(_Strict):
    path: Path
    retention_hours: float = Field(0, ge=0)
    # A C-STORE answers 0xA700 (the modality retries later) unless, after room for the
    # protected copies of every object waiting to be protected (this one included), this
    # much free space remains for the database, the logs and objects arriving meanwhile.
    free_space_reserve_mb: float = Field(256, ge=0)
    # Quarantined and refused-by-Orthanc originals (full identity) are deleted this long
    # after they were set aside, with an audit line.
    quarantine_retention_days: float = Field(30, gt=0)


class State(_Strict):
    """Where the spool's rows, series leases, the retrieval index and the audit table live.
    ``url`` empty: SQLite files in the spool folder (one node, the default). A PostgreSQL
    URL (``postgresql://user@host/db``; the password from libpq's PGPASSFILE or PGPASSWORD
    rather than the file): the cluster mode, every node on that database and one shared spool
    folder. ``node`` names this process among the nodes (its received files, its leases)."""

    url: str = ""
    node: str = Field(default_factory=lambda: socket.gethostname() or "node")
    # A series or forward claim a node holds is renewed every third of this; a node that
    # stops (kill -9, power) loses its claims this long after its last renewal.
    lease_seconds: float = Field(30, ge=3)

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("give a postgresql:// URL for the cluster mode, or leave it empty for SQLite")
        return value.replace("postgresql://", "postgresql+psycopg://", 1)

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
            raise ValueError("a node id is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


class Scheduler(_Strict):
    settle_seconds: float = Field(10, ge=0)
    poll_seconds: float = Field(1, gt=0)
    retry_initial_seconds: float = Field(1, gt=0)
    retry_max_seconds: float = Field(300, gt=0)

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff after ``attempts`` failed tries, capped at ``retry_max_seconds``."""
        return min(self.retry_initial_seconds * 2 ** min(attempts, 20), self.retry_max_seconds)


class PrivateKeep(_Strict):
    group: int = Field(ge=0x0009, le=0xFFFF)
    creator: str

    @field_validator("group", mode="before")
    @classmethod
    def _hex(cls, value: Any) -> Any:
        return int(value, 16) if isinstance(value, str) else value

    @field_validator("group")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("private groups are odd")
        return value


class ProfileConfig(_Strict):
    options: list[str] = []
    keep_private: list[PrivateKeep] = []

    @field_validator("options")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [o for o in value if o not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
        Profile(frozenset(value))  # the options must also fit together
        return value


class Match(_Strict):
    """All given fields must match; an empty match takes everything.

    ``attributes`` names any header attribute by keyword with the values it may have, matched
    as C-FIND matches (PS3.4 C.2.2.2): wildcards ``*`` and ``?``, ranges ``A-B`` for dates
    and times, and for numbers (``SliceThickness: ["0.5-2"]``). ``called_ae`` is the AE title
    the modality addressed the gateway by; ``source`` its IP address or network (CIDR)."""

    calling_ae: list[str] | None = None
    called_ae: list[str] | None = None
    source: list[str] | None = None
    modality: list[str] | None = None
    sop_class_uid: list[str] | None = None
    attributes: dict[str, list[str]] = {}

    @field_validator("source")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for net in value or []:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        return value

    @field_validator("attributes")
    @classmethod
    def _keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = [k for k in value if not dictionary_has_tag(tag_for_keyword(k) or -1)]
        if unknown:
            raise ValueError(f"not DICOM attribute keywords: {unknown} (e.g. StudyDescription, BodyPartExamined)")
        return value

    def accepts(self, calling_ae: str, modality: str, sop_class_uid: str, called_ae: str = "", address: str = "",
                header: Dataset | None = None) -> bool:
        if not all(allowed is None or value in allowed for allowed, value in (
                (self.calling_ae, calling_ae), (self.called_ae, called_ae), (self.modality, modality),
                (self.sop_class_uid, sop_class_uid))):
            return False
        if self.source is not None and not _in_networks(address, self.source):
            return False
        return all(_attribute_matches(header, keyword, patterns) for keyword, patterns in self.attributes.items())


def _in_networks(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def _attribute_matches(header: Dataset | None, keyword: str, patterns: list[str]) -> bool:
    """Any pattern matches the attribute's value; an absent attribute matches only ``*``/empty."""
    element = header.data_element(keyword) if header is not None and keyword in header else None
    if element is None or element.VR == "SQ":
        return any(p.strip() in ("", "*") for p in patterns)
    value = "\\".join(str(v) for v in element.value) if element.VM > 1 else str(element.value or "")
    vr = element.VR
    for pattern in patterns:
        numeric_range = _NUMERIC_RANGE.fullmatch(pattern.strip()) if vr in _NUMERIC_VRS else None
        if numeric_range and _in_numeric_range(numeric_range, value):
            return True
        if not numeric_range and matches(pattern, value, vr):
            return True
    return False


def _in_numeric_range(bounds: re.Match[str], value: str) -> bool:
    """``low-high``, ``low-`` or ``-high`` (PS3.4 range matching, extended to numbers)."""
    low, high = bounds.group("low"), bounds.group("high")
    try:
        number = float(value.split("\\")[0])
    except ValueError:
        return False
    return (low is None or number >= float(low)) and (high is None or number <= float(high))


_NUMERIC_RANGE = re.compile(r"(?P<low>-?[0-9]*\.?[0-9]+)?\s*-\s*(?P<high>-?[0-9]*\.?[0-9]+)?")
_NUMERIC_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"}


class RouteDestination(_Strict):
    """One place a route sends to, with its own profile and transform where given
    (the route's otherwise). ``orthanc`` is the main Orthanc (the ``orthanc`` section)."""

    destination: str
    profile: str | None = None
    plugin: str | None = None
    plugin_settings: dict[str, Any] | None = None
    redaction: dict[str, Any] | None = None


class OrthancDestination(Orthanc):
    """A further Orthanc server, reached over REST like the main one."""

    kind: Literal["orthanc"]


class DicomDestination(_Strict):
    """Any DICOM node, reached by C-STORE."""

    kind: Literal["dicom"]
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_seconds: float = Field(30, gt=0)

    _check_ae = field_validator("ae_title")(_ae_title)


class Route(_Strict):
    name: str
    match: Match = Match()
    # series: each series is routed on its own header once it settled; study: the route
    # waits until no series of the study received anything for settle_seconds.
    level: Literal["series", "study"] = "series"
    profile: str = "default"
    plugin: str = "none"
    plugin_settings: dict[str, Any] = {}
    redaction: dict[str, Any] | None = None
    # The copy Orthanc stores where a transform decoded or changed the pixels: uncompressed,
    # or JPEG 2000 lossless where that is exact and smaller (gateway/lossless_copy.py).
    protected_syntax: Literal["uncompressed", "lossless"] = "uncompressed"
    destinations: list[RouteDestination] = [RouteDestination(destination="orthanc")]
    # Storage Commitment answers success once an object is durable in the spool ("intake"),
    # or only once Orthanc confirmed its protected copy ("orthanc").
    commitment: Literal["intake", "orthanc"] = "intake"


class StorageCommitment(_Strict):
    """Storage Commitment Push Model SCP (PS3.4 Annex J)."""

    # An instance the request names but the spool never received fails after this long.
    missing_after_seconds: float = Field(30, ge=0)
    # Instances still on their way to Orthanc (commitment: orthanc) fail after this long.
    timeout_seconds: float = Field(3600, gt=0)
    poll_seconds: float = Field(0.5, gt=0)


class Workstation(_Peer):
    """A querying AE title and what it may see: originals, the protected data, or nothing;
    and how many studies one C-MOVE or C-GET may name."""

    policy: Policy
    max_studies_per_retrieve: int = Field(20, ge=1, le=10000)


class Destination(_Strict):
    """Where C-MOVE may send: registered AE title, host and port; the workstation entries (by
    AE title) that own it (it receives what its owners may see, never more); and whether the
    leg is DICOM TLS (the destination's certificate checked against ``ca_certificates`` and
    its common name against ``certificate_subject``; the gateway's own certificate where the
    destination asks for one)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    owners: list[str] = Field(min_length=1)
    tls: bool = False
    ca_certificates: Path | None = None
    certificate_subject: str | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    # Restored originals (full identity) sent without TLS: only where the site says so.
    allow_cleartext_originals: bool = False

    _check_ae = field_validator("ae_title")(_ae_title)

    @model_validator(mode="after")
    def _tls_settings(self) -> Destination:
        given = [k for k in ("ca_certificates", "certificate_subject", "client_certificate", "client_private_key")
                 if getattr(self, k)]
        if not self.tls and given:
            raise ValueError(f"{', '.join(given)} only apply with tls: true")
        if self.tls and (self.ca_certificates is None or not self.certificate_subject):
            raise ValueError("tls: true needs ca_certificates (the CA that signs the destination's certificate) "
                             "and certificate_subject (the common name its certificate must carry)")
        if (self.client_certificate is None) != (self.client_private_key is None):
            raise ValueError("give client_certificate and client_private_key together")
        return self


class Retrieval(_Strict):
    workstations: list[Workstation] = []
    destinations: list[Destination] = []

    @model_validator(mode="after")
    def _owners_exist(self) -> Retrieval:
        known = {ws.ae_title: ws.policy for ws in self.workstations}
        for i, dest in enumerate(self.destinations):
            for owner in dest.owners:
                if owner not in known:
                    raise ValueError(f"destinations.{i}.owners: {owner!r} is not a workstation's AE title; "
                                     f"a destination belongs to workstations listed under retrieval.workstations")
                if known[owner] is Policy.DENY:
                    raise ValueError(f"destinations.{i}.owners: {owner!r} has policy deny and cannot own a destination")
        return self

    def workstation(self, ae_title: str, address: str, subject: str | None = None) -> Workstation | None:
        """The entry of a calling AE title from ``address`` (with the TLS certificate's
        common name ``subject``); None when it is unknown."""
        return next((ws for ws in self.workstations if ws.matches(ae_title, address, subject)), None)

    def policy(self, ae_title: str, address: str, subject: str | None = None) -> Policy | None:
        ws = self.workstation(ae_title, address, subject)
        return None if ws is None else ws.policy

    def destination(self, ae_title: str) -> Destination | None:
        return next((d for d in self.destinations if d.ae_title == ae_title), None)

    def destination_policy(self, destination: Destination) -> Policy:
        """What a destination may receive: the least of its owners' policies."""
        return Policy.least(*(ws.policy for ws in self.workstations if ws.ae_title in destination.owners))

    def carries_originals(self, destination: Destination) -> bool:
        """Whether restored originals can reach ``destination``: all its owners are ``restore``."""
        return self.destination_policy(destination) is Policy.RESTORE

    def cleartext_originals(self) -> list[Destination]:
        """Destinations allowed to receive originals without TLS (warned about at start)."""
        return [d for d in self.destinations if not d.tls and self.carries_originals(d)]

    @model_validator(mode="after")
    def _originals_encrypted(self) -> Retrieval:
        for i, d in enumerate(self.destinations):
            if not d.tls and not d.allow_cleartext_originals and self.carries_originals(d):
                raise ValueError(f"destinations.{i} ({d.ae_title}): restored originals (full identity) can be moved "
                                 "here and it has no TLS: set tls: true with ca_certificates and certificate_subject, "
                                 "or allow_cleartext_originals: true to accept the risk on a trusted network")
        return self


class AuditRepository(_Strict):
    """The site's audit record repository (IHE ATNA): DICOM audit messages over syslog."""

    host: str
    port: int = Field(514, ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls"] = "udp"
    ca_certificates: Path | None = None  # tls: the CA that signs the repository (else the system's)
    certificate: Path | None = None  # tls: the gateway's client certificate, where the repository asks
    private_key: Path | None = None
    server_name: str | None = None  # tls: the name in the repository's certificate, if not ``host``
    audit_source_id: str | None = None  # defaults to the listener's AE title
    enterprise_site_id: str | None = None
    timeout_seconds: float = Field(5, gt=0)

    @model_validator(mode="after")
    def _tls_files(self) -> AuditRepository:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both 'certificate' and 'private_key', or neither")
        if self.transport != "tls" and (self.certificate or self.ca_certificates or self.server_name):
            raise ValueError("certificates and server_name are for transport: tls")
        return self


class Config(_Strict):
    listener: Listener = Listener()
    senders: list[Sender] = Field(min_length=1)
    orthanc: Orthanc
    keyring: Path
    spool: Spool
    state: State = State()
    scheduler: Scheduler = Scheduler()
    profiles: dict[str, ProfileConfig] = {"default": ProfileConfig()}
    routes: list[Route] = Field(min_length=1)
    retrieval: Retrieval = Retrieval()
    status_http: StatusHttp = StatusHttp()
    audit_repository: AuditRepository | None = None
    storage_commitment: StorageCommitment = StorageCommitment()
    # Further destinations by name, for routes' ``destinations`` (``orthanc`` is the main one).
    destinations: dict[str, Annotated[OrthancDestination | DicomDestination, Field(discriminator="kind")]] = {}
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _routes_refer(self) -> Config:
        names = {"orthanc", *self.destinations}
        for i, route in enumerate(self.routes):
            if route.profile not in self.profiles:
                raise ValueError(f"routes[{i}].profile: no profile named {route.profile!r}; "
                                 f"defined: {sorted(self.profiles)}")
            if not route.destinations:
                raise ValueError(f"routes[{i}].destinations: a route needs at least one destination")
            for j, dest in enumerate(route.destinations):
                if dest.destination not in names:
                    raise ValueError(f"routes[{i}].destinations[{j}]: no destination named {dest.destination!r};"
                                     f" defined: {sorted(names)} (the 'destinations' section, or 'orthanc')")
                if dest.profile is not None and dest.profile not in self.profiles:
                    raise ValueError(f"routes[{i}].destinations[{j}].profile: no profile named {dest.profile!r};"
                                     f" defined: {sorted(self.profiles)}")
            seen = [d.destination for d in route.destinations]
            if len(seen) != len(set(seen)):
                raise ValueError(f"routes[{i}].destinations: a destination is named twice")
        if "orthanc" in self.destinations:
            raise ValueError("destinations.orthanc: the name 'orthanc' is the main Orthanc (the 'orthanc' section)")
        return self

    def route_for(self, calling_ae: str, modality: str, sop_class_uid: str, called_ae: str = "", address: str = "",
                  header: Dataset | None = None) -> Route | None:
        """The first route whose match accepts the object."""
        return next((r for r in self.routes if r.match.accepts(calling_ae, modality, sop_class_uid, called_ae, address,
                                                               header)), None)


def load_config(path: Path) -> Config:
    """Read and validate; raise ConfigError with every problem listed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = path.parent
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration:\n" + _describe(exc)) from None
    return _resolve_paths(config, base)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the working directory."""
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def fix_all(model: _Strict, *keys: str) -> Any:
        return model.model_copy(update={k: fix(getattr(model, k)) for k in keys if getattr(model, k) is not None})

    def fix_tls(owner: Any) -> Any:
        tls = owner.tls
        if tls is None:
            return owner
        return owner.model_copy(update={"tls": fix_all(tls, "certificate", "private_key", "ca_certificates")})

    moves = [fix_all(d, "ca_certificates", "client_certificate", "client_private_key")
             for d in config.retrieval.destinations]
    retrieval = config.retrieval.model_copy(update={"destinations": moves})
    audit = config.audit_repository
    if audit is not None:
        audit = fix_all(audit, "ca_certificates", "certificate", "private_key")
    destinations = {name: fix_all(d, "password_file", "ca_certificates", "client_certificate", "client_private_key")
                    if isinstance(d, OrthancDestination) else d for name, d in config.destinations.items()}
    return config.model_copy(
        update={
            "destinations": destinations,
            "audit_repository": audit,
            "keyring": fix(config.keyring),
            "spool": config.spool.model_copy(update={"path": fix(config.spool.path)}),
            "orthanc": fix_all(config.orthanc, "password_file", "ca_certificates", "client_certificate",
                               "client_private_key"),
            "listener": fix_tls(config.listener),
            "status_http": fix_tls(config.status_http),
            "retrieval": retrieval,
        }
    )
