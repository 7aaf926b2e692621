"""A real Orthanc and a real gateway on loopback, for the demo, the tests and benchmarks.

Orthanc is the Debian package, started with this repository's ``orthanc/`` settings
(filter plugin included) but its own ports and a temporary storage folder. The gateway
runs as a separate process (``gateway serve``), so tests can kill -9 it like an admin's
worst day would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
ORTHANC_DIR = REPO / "orthanc"
ORTHANC_USER = "gateway"
POSTGRESQL_INDEX_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")


_HANDED_OUT: set[int] = set()


def _share() -> tuple[int, int]:
    """(this process's share, shares): the test suite runs in pytest-xdist workers
    (``gw0``, ``gw1``...), each taking only the ports its number selects, so that two
    workers never hand out the same port between finding it free and binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(worker[2:]) if worker[2:].isdigit() else 0) % count, count


def free_port() -> int:
    """A free loopback port, never one this process handed out before: the kernel may give
    the same free port to two calls in a row, and two peers of one test would then meet on
    it (a TLS test's "wrong certificate" destination answering with the right one)."""
    share, shares = _share()
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        # by the port's upper bits: Linux hands out mostly odd ports for bind(0)
        if (port >> 1) % shares == share and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class OrthancServer:
    """One Orthanc process with its own folder and ports."""

    folder: Path
    gateway_aet: str = "GATEWAY"
    gateway_port: int = 11112
    extra_modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    password: str = "orthanc-test-secret"
    # REST over https: Orthanc's key and certificate in one PEM and the CA this harness
    # checks it with; where Orthanc asks for client certificates, the CA they must chain to
    # and the certificate and key this harness presents.
    https_pem: Path | None = None
    https_ca: Path | None = None
    https_client_ca: Path | None = None
    https_client: tuple[Path, Path] | None = None
    # An Orthanc cluster: the index in database ``postgres_database`` of the PostgreSQL on
    # loopback port ``postgres_port`` (the orthanc-postgresql plugin, several writers), the
    # object files in ``storage``, shared by every Orthanc of the cluster; this one's own
    # folder keeps only its IndexDirectory (the plugin leaves nothing there).
    postgres_port: int | None = None
    postgres_database: str = "orthanc"
    storage: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.https_pem else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def _tls(self) -> dict[str, Any]:
        return {"verify": str(self.https_ca) if self.https_ca else True,
                "cert": tuple(map(str, self.https_client)) if self.https_client else None}

    @property
    def authenticity_keys(self) -> Path:
        """Where the filter plugin reads the gateway's authenticity keys (the gateway exports them)."""
        return self.folder / "authenticity-keys.json"

    def write_config(self) -> Path:
        config = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
        storage = self.storage or self.folder / "storage"
        index = self.folder / "index" if self.storage else storage
        for folder in (storage, index):
            folder.mkdir(parents=True, exist_ok=True)
        config.update(
            StorageDirectory=str(storage),
            IndexDirectory=str(index),
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            RemoteAccessAllowed=False,
            RegisteredUsers={ORTHANC_USER: self.password},
            PythonScript=str(ORTHANC_DIR / "accept_protected.py"),
            PrivacyGateway={"AuthenticityKeys": str(self.authenticity_keys)},
        )
        if self.postgres_port is not None:
            config["Plugins"] = [*config["Plugins"], str(POSTGRESQL_INDEX_PLUGIN)]
            config["PostgreSQL"] = {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1",
                                    "Port": self.postgres_port, "Database": self.postgres_database,
                                    "Username": "postgres", "Password": "", "Lock": False,
                                    "IndexConnectionsCount": 2}
        if self.https_pem is not None:
            config.update(SslEnabled=True, SslCertificate=str(self.https_pem))
        if self.https_client_ca is not None:
            config.update(SslVerifyPeers=True, SslTrustedClientCertificates=str(self.https_client_ca))
        modalities = {"gateway": {"AET": self.gateway_aet, "Host": "127.0.0.1", "Port": self.gateway_port,
                                  "AllowStore": True, "AllowEcho": True, "AllowFind": True,
                                  "AllowMove": True, "AllowGet": True}}
        modalities.update(self.extra_modalities)
        config["DicomModalities"] = modalities
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> OrthancServer:
        config = self.write_config()
        log = open(self.folder / "orthanc.log", "ab")
        env = dict(os.environ, TCP_NODELAY="1")
        if self.https_pem is not None:
            env["LD_LIBRARY_PATH"] = str(_civetweb_openssl3_shim(self.folder / "tls-shim"))
        self.process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=(ORTHANC_USER, self.password), timeout=1,
                                **self._tls).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("Orthanc did not answer on REST within 30 s")

    def stop(self) -> None:
        _terminate(self.process, 15)
        self.process = None

    def get(self, path: str) -> Any:
        r = requests.get(f"{self.url}/{path.lstrip('/')}", auth=(ORTHANC_USER, self.password), timeout=30,
                         **self._tls)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.content

    def delete(self, path: str) -> None:
        r = requests.delete(f"{self.url}/{path.lstrip('/')}", auth=(ORTHANC_USER, self.password), timeout=60,
                            **self._tls)
        r.raise_for_status()


def _civetweb_openssl3_shim(folder: Path) -> Path:
    """Debian 12's Orthanc 1.10.1 serves https through civetweb 1.15, which loads
    ``libssl.so`` at run time and calls ``SSL_get_peer_certificate``, a symbol OpenSSL 3 no
    longer exports (now ``SSL_get1_peer_certificate``): the first https request crashes
    Orthanc (a NULL call in civetweb-worker). A ``libssl.so`` in ``folder`` that adds the
    old name over the real library (and a ``libcrypto.so`` that is only the real one, so
    no -dev package is needed) lets Orthanc's own ``SslEnabled`` work. The orthancteam
    Docker image has no such problem."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "shim.c"
    source.write_text("typedef struct ssl_st SSL; typedef struct x509_st X509;\n"
                      "X509 *SSL_get1_peer_certificate(const SSL *s);\n"
                      "X509 *SSL_get_peer_certificate(const SSL *s) { return SSL_get1_peer_certificate(s); }\n")
    for name, real, src in (("libssl.so", "libssl.so.3", str(source)), ("libcrypto.so", "libcrypto.so.3", "/dev/null")):
        subprocess.run(["cc", "-shared", "-fPIC", "-x", "c", src, "-o", str(folder / name), "-Wl,--no-as-needed",
                        f"-l:{real}"], check=True, capture_output=True)
    return folder


@dataclass
class GatewayProcess:
    """``gateway serve`` as a child process, with a generated config."""

    folder: Path
    orthanc: OrthancServer
    senders: list[dict[str, Any]] = field(default_factory=lambda: [{"ae_title": "MODALITY"}])
    routes: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "default", "plugin": "none"}])
    profiles: dict[str, Any] = field(default_factory=lambda: {"default": {"options": []}})
    settle_seconds: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    status_port: int = 0
    ae_title: str = "GATEWAY"
    # A node of a gateway cluster: further Orthanc servers of the same Orthanc cluster
    # (``orthanc.failover``; each gets the authenticity keys), the state database
    # (``state.url``) and this node's id, and the keyring and spool folder the nodes share.
    failover: list[OrthancServer] = field(default_factory=list)
    state_url: str | None = None
    node: str | None = None
    shared_keyring: Path | None = None
    shared_spool: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the process's environment
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or self.orthanc.gateway_port
        self.status_port = self.status_port or free_port()

    @property
    def keyring(self) -> Path:
        return self.shared_keyring or self.folder / "keyring.json"

    @property
    def spool(self) -> Path:
        return self.shared_spool or self.folder / "spool"

    @property
    def config_path(self) -> Path:
        return self.folder / "gateway.yaml"

    @property
    def log_path(self) -> Path:
        return self.folder / "gateway.log"

    def write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.keyring.exists():
            run_cli("keys", "init", "--keyring", str(self.keyring))
        for orthanc in (self.orthanc, *self.failover):
            run_cli("keys", "export-authenticity", "--keyring", str(self.keyring),
                    "--out", str(orthanc.authenticity_keys))
        orthanc_settings: dict[str, Any] = {"url": self.orthanc.url, "username": ORTHANC_USER,
                                            "password": self.orthanc.password}
        if self.failover:
            orthanc_settings["failover"] = [o.url for o in self.failover]
        config: dict[str, Any] = {
            "listener": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port},
            "senders": self.senders,
            "orthanc": orthanc_settings,
            "keyring": str(self.keyring),
            "spool": {"path": str(self.spool), "retention_hours": 0},
            "scheduler": {"settle_seconds": self.settle_seconds, "poll_seconds": 0.2,
                          "retry_initial_seconds": 0.5, "retry_max_seconds": 2},
            "profiles": self.profiles,
            "routes": self.routes,
            "status_http": {"port": self.status_port},
            "log_level": "INFO",
        }
        if self.state_url is not None or self.node is not None:
            config["state"] = {k: v for k, v in (("url", self.state_url), ("node", self.node)) if v is not None}
        config.update(self.extra)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self) -> GatewayProcess:
        self.write_config()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **self.env} if self.env else None,
        )
        wait_port(self.port)
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        _terminate(self.process, 20)
        self.process = None

    def status(self) -> str:
        return run_cli("status", "--config", str(self.config_path)).stdout


def _terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS``; a failure raises with what the command printed."""
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args[:2])} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def storescu(port: int, files: list[Path] | Path, calling: str = "MODALITY", called: str = "GATEWAY",
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (verbose, so each response status is printed), the modality of the
    tests and the demo."""
    targets = [str(f) for f in (files if isinstance(files, list) else [files])]
    return subprocess.run(
        ["storescu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *targets, "+sd", "-R"],
        capture_output=True, text=True, check=check, timeout=600, env=dict(os.environ, TCP_NODELAY="1"),
    )


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("Orthanc", "storescu"))
