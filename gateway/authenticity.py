"""The authenticity tag that lets Orthanc tell the gateway's objects from anything else.

Markers (Patient Identity Removed, the envelope's creator and key id) can be typed into any
object; a keyed tag cannot. Each protected object carries, in the envelope's private block,
element (0013,xx07) LO ``auth-NNNN:<32 hex>``: an HMAC-SHA256 (first 128 bits) over the
object's whole file bytes as uploaded, computed while the element still holds the fixed
placeholder ``auth-0000:000...0``. The verifier (Orthanc's filter plugin,
``orthanc/accept_protected.py``, standard library only) finds the tag's text in the bytes,
puts the placeholder back and recomputes. The protect processes tag the copies they write
for Orthanc (the HMAC then runs in parallel, not in the forwarding process); forwarding
checks the tag is under the active key and makes it again where it is not, so a rotation
takes effect for everything not yet forwarded. Orthanc reads the keys from a file that
``gateway keys export-authenticity`` writes.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from gateway.keyring import Keyring, KeyringError

ELEMENT = 0x07
KEY_ID_LENGTH = 9  # "auth-NNNN"
PLACEHOLDER = "auth-0000:" + "0" * 32
_TAG = re.compile(rb"auth-[0-9]{4}:[0-9a-f]{32}")


class AuthenticityError(Exception):
    """The object has no placeholder to sign, or more than one."""


def tag(data: bytes, key_id: str, key: bytes) -> str:
    """The tag text for ``data`` (which holds the placeholder once)."""
    return f"{key_id}:{hmac.new(key, data, hashlib.sha256).hexdigest()[:32]}"


def sign(data: bytes, keyring: Keyring) -> bytes:
    """``data`` with its placeholder replaced by the tag under the active key."""
    _require_key(keyring)
    marker = PLACEHOLDER.encode()
    position = data.find(marker)
    if position < 0 or data.find(marker, position + 1) >= 0:
        raise AuthenticityError("the object does not hold exactly one authenticity placeholder")
    key_id = keyring.authenticity_active
    value = tag(data, key_id, keyring.authenticity[key_id]).encode()
    return data[:position] + value + data[position + len(marker):]


def tagged(data: bytes, keyring: Keyring, at: int | None = None) -> bytes:
    """``data`` tagged under the active key: signed here where it holds the placeholder;
    where protection tagged it already (its tag at ``at``, or found), as it is when that tag
    is under the active key and signed again when it is not (a rotation since)."""
    _require_key(keyring)
    if at is None:
        at = data.find(PLACEHOLDER.encode())
        if at < 0:
            found = _TAG.search(data)
            at = found.start() if found is not None else -1
    value = data[at:at + len(PLACEHOLDER)] if at >= 0 else b""
    if value == PLACEHOLDER.encode():
        return sign(data, keyring)
    if not _TAG.fullmatch(value):
        raise AuthenticityError("the object holds neither an authenticity placeholder nor a tag")
    if value[:KEY_ID_LENGTH].decode() == keyring.authenticity_active:
        return data
    return sign(data[:at] + PLACEHOLDER.encode() + data[at + len(PLACEHOLDER):], keyring)


def _require_key(keyring: Keyring) -> None:
    if not keyring.authenticity:
        raise KeyringError(f"keyring {keyring.path} has no authenticity key; add one with "
                           "'gateway keys rotate --authenticity'")


def verify(data: bytes, value: str, keys: dict[str, bytes]) -> bool:
    """True when ``value`` (the element's text) is a valid tag of ``data``."""
    key_id, _, _ = value.partition(":")
    key = keys.get(key_id)
    if key is None or len(value) != len(PLACEHOLDER):
        return False
    position = data.find(value.encode())
    if position < 0 or data.find(value.encode(), position + 1) >= 0:
        return False
    unsigned = data[:position] + PLACEHOLDER.encode() + data[position + len(value):]
    return hmac.compare_digest(tag(unsigned, key_id, key), value)
