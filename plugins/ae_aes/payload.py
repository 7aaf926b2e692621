"""What restores one instance exactly: the int8 latent and the coded residual.

``residual = (original - prediction) mod 2**bits``, read as a signed word and zigzag
mapped, so small errors of either sign become small unsigned numbers. When they all fit
in a byte the residual is one byte plane; otherwise the low and high byte planes are
stored one after the other (so zstd sees the near-constant high bytes together). Both
the latent and the residual planes are zstd-compressed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from gateway.plugin import PluginError
from plugins.ae_aes.frames import Layout

MAGIC = b"AEAES1"


@dataclass
class Payload:
    model: str
    layout: Layout
    lo: list[int]
    hi: list[int]
    latent: np.ndarray  # int8 (frames, C, h, w)
    residual: np.ndarray  # int64 (frames, rows, cols), signed words
    tail: bytes  # pixel value bytes after the frames (padding)

    def encode(self, level: int = 3) -> bytes:
        bits = np.dtype(self.layout.dtype).itemsize * 8
        zz = _zigzag(self.residual, bits)
        wide = bool(zz.max(initial=0) > 255)
        planes = np.stack([zz & 0xFF, zz >> 8]).astype(np.uint8) if wide else zz.astype(np.uint8)
        head = {"model": self.model, "frames": self.layout.frames, "rows": self.layout.rows,
                "cols": self.layout.cols, "dtype": self.layout.dtype, "value_len": self.layout.value_len,
                "lo": self.lo, "hi": self.hi, "latent_shape": list(self.latent.shape), "wide": wide}
        cctx = zstandard.ZstdCompressor(level=level)
        blobs = [MAGIC, json.dumps(head).encode(), cctx.compress(self.latent.tobytes()),
                 cctx.compress(planes.tobytes()), self.tail]
        return b"".join(struct.pack(">I", len(b)) + b for b in blobs)

    @classmethod
    def decode(cls, data: bytes) -> Payload:
        blobs, pos = [], 0
        while pos + 4 <= len(data):
            (size,) = struct.unpack_from(">I", data, pos)
            blobs.append(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if len(blobs) != 5 or blobs[0] != MAGIC:
            raise PluginError("ae_aes payload is malformed")
        head = json.loads(blobs[1])
        layout = Layout(head["frames"], head["rows"], head["cols"], head["dtype"], head["value_len"])
        dctx = zstandard.ZstdDecompressor()
        latent = np.frombuffer(dctx.decompress(blobs[2]), np.int8).reshape(head["latent_shape"])
        n = layout.frames * layout.rows * layout.cols
        planes = np.frombuffer(dctx.decompress(blobs[3]), np.uint8).astype(np.int64)
        zz = planes[:n] | (planes[n:] << 8) if head["wide"] else planes
        bits = np.dtype(layout.dtype).itemsize * 8
        residual = _unzigzag(zz, bits).reshape(layout.frames, layout.rows, layout.cols)
        return cls(head["model"], layout, head["lo"], head["hi"], latent, residual, blobs[4])


def residual_of(original: np.ndarray, prediction: np.ndarray, bits: int) -> np.ndarray:
    """(original - prediction) wrapped to a signed ``bits``-bit word."""
    d = (original.astype(np.int64) - prediction) & ((1 << bits) - 1)
    return d - ((d >> (bits - 1)) << bits)


def add_residual(prediction: np.ndarray, residual: np.ndarray, dtype: str) -> np.ndarray:
    """The original words: (prediction + residual) wrapped to the stored word."""
    bits = np.dtype(dtype).itemsize * 8
    words = (prediction + residual) & ((1 << bits) - 1)
    native = np.dtype(dtype).newbyteorder("=")
    return words.astype(native.str.replace("i", "u")).view(native)


def _zigzag(r: np.ndarray, bits: int) -> np.ndarray:
    return ((r << 1) ^ (r >> 63)) & ((1 << bits) - 1)


def _unzigzag(z: np.ndarray, bits: int) -> np.ndarray:
    return (z >> 1) ^ -(z & 1)
