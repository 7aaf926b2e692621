"""The keyring: key-encryption keys by id, and the secret that keys pseudonyms.

The file is JSON, readable by the gateway's user only (mode 0600 is checked on load).
Rotation adds a new active key-encryption key and keeps the old ones, so envelopes
sealed under an old key still open. The pseudonym secret never rotates: rotating it
would split every patient into two pseudonyms.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"keyring {path} is not a valid keyring file ({type(exc).__name__})") from None
        if ring.active not in keks or any(len(k) != 32 for k in keks.values()):
            raise KeyringError(f"keyring {path} is inconsistent: bad active key or key length")
        return ring

    def rotate(self) -> str:
        """Add a new active key; old keys stay for opening old envelopes."""
        key_id = self._add_key()
        self.save()
        return key_id

    def _add_key(self) -> str:
        key_id = f"kek-{len(self.keks) + 1:04d}"
        self.keks[key_id] = secrets.token_bytes(32)
        self.created[key_id] = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
            },
            indent=2,
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
