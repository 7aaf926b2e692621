"""Length-prefixed framing of a list of byte strings (4-byte big-endian length each).

The recovery envelope's plaintext and the plugins' records are sequences of blobs; one
helper writes and reads them all, so a truncated or padded record is handled one way.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct(">I")


def pack(blobs: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(b)) + b for b in blobs)


def unpack(data: bytes) -> list[bytes]:
    """The blobs of ``data``; trailing bytes too short for a length (padding) are ignored."""
    blobs, pos = [], 0
    while pos + _LENGTH.size <= len(data):
        (size,) = _LENGTH.unpack_from(data, pos)
        blobs.append(data[pos + _LENGTH.size : pos + _LENGTH.size + size])
        pos += _LENGTH.size + size
    return blobs
