"""The keyring: key-encryption keys by id, and the secret that keys pseudonyms.

The file is JSON, readable by the gateway's user only (mode 0600 is checked on load).
Rotation adds a new active key-encryption key and keeps the old ones, so envelopes
sealed under an old key still open. The pseudonym secret never rotates: rotating it
would split every patient into two pseudonyms. Authenticity keys (``auth-NNNN``) tag
every object forwarded to Orthanc (``gateway/authenticity.py``); Orthanc holds a copy
(``gateway keys export-authenticity``) and refuses objects without a valid tag.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


class KeyringError(Exception):
    """The keyring is missing, unreadable, too open, or lacks a key."""


@dataclass
class Keyring:
    """Key-encryption keys (32 bytes each) by id; ``active`` seals new envelopes."""

    keks: dict[str, bytes]
    created: dict[str, str]
    active: str
    pseudonym_secret: bytes
    path: Path | None = field(default=None, compare=False)
    authenticity: dict[str, bytes] = field(default_factory=dict)
    authenticity_active: str = ""

    def kek(self, key_id: str) -> bytes:
        try:
            return self.keks[key_id]
        except KeyError:
            raise KeyringError(f"key id {key_id!r} is not in the keyring {self.path}") from None

    @classmethod
    def create(cls, path: Path) -> Keyring:
        """Write a new keyring with one active key; refuses to overwrite."""
        if path.exists():
            raise KeyringError(f"{path} exists already; use 'gateway keys rotate' to add a key")
        ring = cls(keks={}, created={}, active="", pseudonym_secret=secrets.token_bytes(32), path=path)
        ring._add_key()
        ring._add_authenticity_key()
        ring.save()
        return ring

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read and check the keyring file."""
        if not path.exists():
            raise KeyringError(f"keyring {path} does not exist; create it with 'gateway keys init'")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyringError(
                f"keyring {path} has mode {mode:04o}; it must be readable by the gateway only "
                f"(chmod 600 {path})"
            )
        try:
            raw = json.loads(path.read_text())
            keks = {k: base64.b64decode(v) for k, v in raw["keks"].items()}
            ring = cls(
                keks=keks,
                created=dict(raw["created"]),
                active=raw["active"],
                pseudonym_secret=base64.b64decode(raw["pseudonym_secret"]),
                path=path,
                # keyrings written before authenticity tags have none: 'keys rotate --authenticity'
                authenticity={k: base64.b64decode(v) for k, v in raw.get("authenticity", {}).items()},
                authenticity_active=raw.get("authenticity_active", ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"keyring {path} is not a valid keyring file ({type(exc).__name__})") from None
        if ring.authenticity and ring.authenticity_active not in ring.authenticity:
            raise KeyringError(f"keyring {path} is inconsistent: bad active authenticity key")
        if ring.active not in keks or any(len(k) != 32 for k in [*keks.values(), *ring.authenticity.values()]):
            raise KeyringError(f"keyring {path} is inconsistent: bad active key or key length")
        return ring

    def rotate(self) -> str:
        """Add a new active key; old keys stay for opening old envelopes."""
        key_id = self._add_key()
        self.save()
        return key_id

    def rotate_authenticity(self) -> str:
        """Add a new active authenticity key; Orthanc must get it (export) before the next forward."""
        key_id = self._add_authenticity_key()
        self.save()
        return key_id

    def _add_authenticity_key(self) -> str:
        key_id = f"auth-{len(self.authenticity) + 1:04d}"
        self.authenticity[key_id] = secrets.token_bytes(32)
        self.created[key_id] = datetime.now(UTC).isoformat(timespec="seconds")
        self.authenticity_active = key_id
        return key_id

    def export_authenticity(self, out: Path, only_active: bool = False) -> None:
        """The authenticity keys as Orthanc's filter reads them (mode 0600: only Orthanc's user
        may read it there). Older keys stay until ``only_active``: a running gateway signs
        with the key it loaded until it restarts."""
        keys = {k: v for k, v in self.authenticity.items() if not only_active or k == self.authenticity_active}
        body = json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()}, indent=2)
        _write_private(out, body)

    def _add_key(self) -> str:
        key_id = f"kek-{len(self.keks) + 1:04d}"
        self.keks[key_id] = secrets.token_bytes(32)
        self.created[key_id] = datetime.now(UTC).isoformat(timespec="seconds")
        self.active = key_id
        return key_id

    def save(self) -> None:
        """Write atomically with mode 0600."""
        assert self.path is not None
        body = json.dumps(
            {
                "version": 1,
                "active": self.active,
                "keks": {k: base64.b64encode(v).decode() for k, v in self.keks.items()},
                "created": self.created,
                "pseudonym_secret": base64.b64encode(self.pseudonym_secret).decode(),
                "authenticity": {k: base64.b64encode(v).decode() for k, v in self.authenticity.items()},
                "authenticity_active": self.authenticity_active,
            },
            indent=2,
        )
        _write_private(self.path, body)


def _write_private(path: Path, body: str) -> None:
    """Write atomically with mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
