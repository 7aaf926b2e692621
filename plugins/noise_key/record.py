"""What ``noise_key`` keeps per instance in the sealed envelope.

The record is encrypted and authenticated by the gateway's envelope, so it may hold what
regenerates the noise (strength and the per-protection nonce; the key itself is derived
again from the study's data key) and the few original bytes the protected pixels cannot
carry: non-canonical spare bits, or the whole original value when it was compressed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from gateway.plugin import PluginError

VERSION = 1
_HEAD = struct.Struct(">Bd16sII")  # version, strength, nonce, len(spare), len(original)


@dataclass(frozen=True)
class Record:
    strength: float
    nonce: bytes
    spare: bytes = b""  # zlib of the original's spare-bit words, b"" when canonical
    original: bytes = b""  # the original's encapsulated pixel value, b"" when it was native

    def encode(self) -> bytes:
        spare = zlib.compress(self.spare, 6) if self.spare else b""
        head = _HEAD.pack(VERSION, self.strength, self.nonce, len(spare), len(self.original))
        return head + spare + self.original

    @classmethod
    def decode(cls, data: bytes) -> Record:
        if len(data) < _HEAD.size:
            raise PluginError("noise_key record is truncated")
        version, strength, nonce, n_spare, n_original = _HEAD.unpack_from(data)
        if version != VERSION or len(data) != _HEAD.size + n_spare + n_original:
            raise PluginError(f"noise_key record version {version} or length is not understood")
        body = data[_HEAD.size :]
        spare = zlib.decompress(body[:n_spare]) if n_spare else b""
        return cls(strength, nonce, spare, body[n_spare:])
