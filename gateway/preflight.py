"""What ``serve`` needs before it starts, checked by ``check-config`` and by ``serve`` itself.

A missing secret file (the Orthanc password a compose file forgot to mount) or a spool
folder the gateway's user cannot write must stop the start with a message that says what
to fix, not a traceback in a restart loop. Orthanc being down is only a warning: the
gateway takes objects anyway and forwards them when Orthanc is back.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests

from gateway.config import Config, ConfigError, Orthanc


def check_files(config: Config) -> None:
    """Every file the service reads is readable and its spool folder writable; raise
    ConfigError listing every problem."""
    problems = []
    if config.orthanc.password_file is not None:
        problems += _readable("orthanc.password_file", config.orthanc.password_file, secret=True)
    tls = config.listener.tls
    if tls is not None:
        for key, path in (("certificate", tls.certificate), ("private_key", tls.private_key),
                          ("ca_certificates", tls.ca_certificates)):
            if path is not None:
                problems += _readable(f"listener.tls.{key}", path)
    spool = config.spool.path
    existing = next(p for p in (spool, *spool.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"spool.path: {existing} is not a folder this user (uid {os.getuid()}) can write;"
                        f" the spool {spool} must be owned by the gateway's user")
    if problems:
        raise ConfigError("the gateway cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def _readable(key: str, path: Path, secret: bool = False) -> list[str]:
    if not path.is_file():
        hint = " (a secret the deployment must mount)" if secret else ""
        return [f"{key}: {path} does not exist{hint}"]
    try:
        with path.open("rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        return [f"{key}: {path} cannot be read by uid {os.getuid()} ({exc.strerror})"]
    return [f"{key}: {path} is empty"] if secret and empty else []


def orthanc_warning(config: Config) -> str | None:
    """None when every Orthanc of ``orthanc.url`` and ``orthanc.failover`` answers with the
    configured credentials, else what is wrong with each that does not."""
    problems = [p for url in config.orthanc.urls if (p := _orthanc_problem(config.orthanc, url))]
    if not problems:
        return None
    if len(problems) < len(config.orthanc.urls):
        return "; ".join(problems) + "; the other Orthanc servers of the cluster serve meanwhile"
    return "; ".join(problems) + "; objects wait in the spool until one does"


def _orthanc_problem(orthanc: Orthanc, url: str) -> str | None:
    try:
        response = requests.get(f"{url.rstrip('/')}/system", auth=(orthanc.username, orthanc.secret()),
                                timeout=min(orthanc.timeout_seconds, 5))
    except requests.RequestException as exc:
        return f"Orthanc at {url} is not reachable ({type(exc).__name__})"
    if response.status_code in (401, 403):
        return f"Orthanc at {url} refused the gateway's credentials (HTTP {response.status_code})"
    if not response.ok:
        return f"Orthanc at {url} answered HTTP {response.status_code}"
    return None
