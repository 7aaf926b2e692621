"""The keys of one study: its data key (wrapped by a keyring KEK) and the per-series secret
the plugins derive their keys from. Protect and restore both need them; neither owns them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from gateway import envelope
from gateway.keyring import Keyring


class DataKeys(Protocol):
    """Where a study's data key lives between its series (the spool, or memory offline)."""

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        """(KEK id, wrapped data key, data key) for the (pseudonymous) study UID."""
        ...


class MemoryDataKeys:
    """Data keys for one run of the offline command."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, bytes, bytes]] = {}

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        if study_uid not in self._keys:
            key = envelope.new_data_key()
            key_id, wrapped = envelope.wrap(keyring, key)
            self._keys[study_uid] = (key_id, wrapped, key)
        return self._keys[study_uid]


def series_key(data_key: bytes, series_uid: str) -> bytes:
    """The secret a plugin derives its keys from: one per series, from the study's data key."""
    return hmac.new(data_key, f"series\x00{series_uid}".encode(), hashlib.sha256).digest()
