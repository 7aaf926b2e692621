"""The recovery envelope: everything needed to restore an instance, sealed inside it.

Format (version 1), in a private block of group 0x0013 whose creator is
``PRIVACY GATEWAY ENVELOPE 1``:

- (0013,xx01) LO  format version, "1"
- (0013,xx02) LO  id of the key-encryption key (KEK) in the keyring
- (0013,xx03) OB  the study's data key, wrapped with the KEK (AES key wrap, RFC 3394)
- (0013,xx04) OB  12-byte nonce
- (0013,xx05) OB  AES-256-GCM ciphertext and tag of the payload; the additional data is
  ``b"PGW-ENVELOPE-1|" + kek id + "|" + SOP Instance UID`` so an envelope cannot be
  moved to another instance
- (0013,xx06) LO  the transforms applied, in order (not secret; says which code restores)

The payload is a small binary container (see ``Content``): the original's bytes around
the pixel value (zlib), its SHA-256, and one record per transform.

Why not the standard Encrypted Attributes Sequence (0400,0500)? Its content must be a CMS
EnvelopedData; the ``cryptography`` library builds those only for RSA recipients with
AES-CBC, which is unauthenticated and would put an RSA PKI in every site. AES-256-GCM
under keyring KEKs is authenticated, fast (about 1.6 GB/s) and needs only the keyring
to open: ``gateway restore`` does it, and the format above is all another tool needs.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway import authenticity, framing
from gateway.keyring import Keyring
from gateway.original import Cut

GROUP = 0x0013
CREATOR = "PRIVACY GATEWAY ENVELOPE 1"
VERSION = "1"


class EnvelopeError(Exception):
    """The envelope is missing, malformed, or does not open with the keyring."""


@dataclass
class Content:
    """What the envelope protects."""

    cut: Cut
    records: list[tuple[str, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "pixel_tag": self.cut.pixel_tag,
                "stages": [name for name, _ in self.records],
            }
        ).encode()
        blobs = [head, self.cut.digest, zlib.compress(self.cut.prefix, 6), self.cut.suffix]
        blobs += [record for _, record in self.records]
        data = framing.pack(blobs)
        return data + b"\0" * (len(data) % 2)  # DICOM pads odd OB values; stay even

    @classmethod
    def decode(cls, data: bytes) -> Content:
        blobs = framing.unpack(data)
        head = json.loads(blobs[0])
        cut = Cut(
            prefix=zlib.decompress(blobs[2]),
            suffix=blobs[3],
            pixel_tag=head["pixel_tag"],
            digest=blobs[1],
        )
        return cls(cut=cut, records=list(zip(head["stages"], blobs[4:], strict=True)))


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap(keyring: Keyring, data_key: bytes, key_id: str | None = None) -> tuple[str, bytes]:
    key_id = key_id or keyring.active
    return key_id, aes_key_wrap(keyring.kek(key_id), data_key)


def unwrap(keyring: Keyring, key_id: str, wrapped: bytes) -> bytes:
    try:
        return aes_key_unwrap(keyring.kek(key_id), wrapped)
    except InvalidUnwrap:
        raise EnvelopeError(f"the data key does not unwrap with key {key_id!r}") from None


def seal(ds: Dataset, payload: Content, key_id: str, wrapped_key: bytes, data_key: bytes) -> None:
    """Add the envelope to ``ds`` (whose SOP Instance UID must be final)."""
    nonce = os.urandom(12)
    aad = _aad(key_id, str(ds.SOPInstanceUID))
    ciphertext = AESGCM(data_key).encrypt(nonce, payload.encode(), aad)
    block = ds.private_block(GROUP, CREATOR, create=True)
    block.add_new(0x01, "LO", VERSION)
    block.add_new(0x02, "LO", key_id)
    block.add_new(0x03, "OB", wrapped_key)
    block.add_new(0x04, "OB", nonce)
    block.add_new(0x05, "OB", ciphertext)
    block.add_new(0x06, "LO", [name for name, _ in payload.records] or "")
    block.add_new(authenticity.ELEMENT, "LO", authenticity.PLACEHOLDER)  # tagged for Orthanc (authenticity.py)


def has_envelope(ds: Dataset) -> bool:
    try:
        ds.private_block(GROUP, CREATOR)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Opened:
    payload: Content
    data_key: bytes
    key_id: str


def open_envelope(ds: Dataset, keyring: Keyring) -> Opened:
    """Decrypt and authenticate the envelope of ``ds``; raise EnvelopeError if it fails."""
    try:
        block = ds.private_block(GROUP, CREATOR)
        version = _text(block[0x01].value)
        key_id = _text(block[0x02].value)
        wrapped, nonce, ciphertext = (bytes(block[i].value) for i in (0x03, 0x04, 0x05))
    except KeyError:
        raise EnvelopeError("no recovery envelope in this object") from None
    if version != VERSION:
        raise EnvelopeError(f"envelope format {version!r} is not supported (this gateway reads {VERSION!r})")
    data_key = unwrap(keyring, key_id, wrapped)
    try:
        plain = AESGCM(data_key).decrypt(nonce, ciphertext, _aad(key_id, str(ds.SOPInstanceUID)))
    except InvalidTag:
        raise EnvelopeError("the envelope does not authenticate (altered, or moved to another instance)") from None
    return Opened(payload=Content.decode(plain), data_key=data_key, key_id=key_id)


def stage_names(ds: Dataset) -> list[str]:
    """The transforms that protected ``ds``, from the envelope's clear-text list (an altered
    list cannot make a restore wrong: the original's digest still judges)."""
    try:
        value = ds.private_block(GROUP, CREATOR)[0x06].value
    except KeyError:
        return []
    return [_text(v) for v in (value if isinstance(value, (list, MultiValue)) else [value]) if _text(v)]


def wrapped_key(ds: Dataset) -> tuple[str, bytes]:
    """(KEK id, wrapped data key) of the envelope of ``ds``."""
    try:
        block = ds.private_block(GROUP, CREATOR)
        return _text(block[0x02].value), bytes(block[0x03].value)
    except KeyError:
        raise EnvelopeError("no recovery envelope in this object") from None


def _aad(key_id: str, sop_instance_uid: str) -> bytes:
    return f"PGW-ENVELOPE-1|{key_id}|{sop_instance_uid}".encode()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\0 ")
