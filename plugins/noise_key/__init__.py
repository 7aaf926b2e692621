"""``noise_key``: pixels packed with keyed Gaussian noise (PPDD, seed paper), exactly reversible.

Each sample gets ``round(N(0, (strength * 2**BitsStored)**2))`` added modulo
``2**BitsStored``; the noise comes from AES-CTR under ``ctx.key("noise_key/<SOP UID>")``
and a fresh random nonce per protection (kept in the sealed record), so no two objects
share noise. Restore subtracts the same integers: bit for bit, no clipping. The header is
untouched, so the protected object stays valid DICOM for the same IOD.

Why modulo: clipping would lose information, and a wider stored type is not allowed for
CT (BitsAllocated 16). The wrap also decides the privacy. Wrapped Gaussian noise keeps
exp(-2 pi^2 strength^2) of the image in the circular mean of the stored values: at the
default strength 1.0 that is 3e-9, i.e. the stored pixels are as good as independent of
the image (a stream cipher with a Gaussian look); at 0.3 (0.14) an attacker averaging
32x32 blocks recovers the anatomy's block means (r 0.84-0.98), at 0.1 and below it shows
through a plain blur. ``bench/noise_key.py`` measures this per strength.

Compressed originals are decoded (gateway.frames: pylibjpeg, GDCM; YBR colour as RGB),
protected as native pixels, and their encapsulated value is kept in the sealed record for
the exact restore; a value that cannot be decoded raises ``PluginError`` (quarantine), so
an unprotected image never leaves under this route. Native data of any layout (colour,
planar, subsampled, big endian, multi-frame, 1-bit) is noised word by word as stored.
"""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset

from gateway import frames
from gateway.original import pixel_tag_of
from gateway.plugin import Context, PluginError
from plugins.noise_key.noise import gaussian_chunks
from plugins.noise_key.record import Record
from plugins.noise_key.samples import SampleLayout

# Attributes that describe the original's values and would be false for the noisy copy
# (the envelope's copy of the original header brings them back on restore).
STALE_ATTRIBUTES = ("SmallestImagePixelValue", "LargestImagePixelValue")


def noise_key(ctx: Context, sop_uid: str) -> bytes:
    """The AES key of one instance's noise stream."""
    return ctx.key(f"noise_key/{sop_uid}")


def shift(layout: SampleLayout, low: np.ndarray, key: bytes, nonce: bytes, strength: float, sign: int) -> np.ndarray:
    """``(low + sign * noise) mod 2**BitsStored``, block by block to bound memory."""
    out = np.empty_like(low)
    modulus = layout.modulus
    pos = 0
    for noise in gaussian_chunks(key, nonce, low.size, strength * modulus):
        block = low[pos : pos + noise.size].astype(np.int64)
        out[pos : pos + noise.size] = (block + sign * noise) % modulus
        pos += noise.size
    return out


class NoiseKeyTransform:
    """Keyed-noise packing; ``strength`` is the noise's sd as a fraction of 2**BitsStored."""

    name = "noise_key"
    series_level = False
    refuses = (frames.FLOAT, frames.UNDECODABLE)

    def __init__(self, strength: float = 1.0) -> None:
        if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
            raise PluginError(f"noise_key strength must be a number in (0, 1], got {strength!r}")
        self.strength = float(strength)

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        return [self._protect(ds, ctx) for ds in series]

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        for ds, record in zip(series, records, strict=True):
            if record:
                self._restore(ds, Record.decode(record), ctx)

    def _protect(self, ds: Dataset, ctx: Context) -> bytes:
        if pixel_tag_of(ds) is None:
            return b""  # no image (e.g. a report in the series): nothing to hide
        if "PixelData" not in ds:
            raise PluginError(f"{frames.FLOAT} is not supported")
        original = frames.to_native(ds) or b""
        layout = SampleLayout.of(ds)
        value = bytes(ds.PixelData)
        words = layout.words(value)
        low = layout.low(words)
        spare = b"" if np.array_equal(layout.canonical(low), words) else (words ^ low).astype(layout.dtype).tobytes()
        nonce = os.urandom(16)
        noisy = shift(layout, low, noise_key(ctx, str(ds.SOPInstanceUID)), nonce, self.strength, +1)
        ds.PixelData = layout.pack(layout.canonical(noisy), value)
        for keyword in STALE_ATTRIBUTES:
            if keyword in ds:
                delattr(ds, keyword)
        return Record(self.strength, nonce, spare if not original else b"", original).encode()

    def _restore(self, ds: Dataset, record: Record, ctx: Context) -> None:
        if record.original:
            ds.PixelData = record.original
            return
        if "PixelData" not in ds:
            raise PluginError("the protected object has no pixel data")
        layout = SampleLayout.of(ds)
        value = bytes(ds.PixelData)
        low = layout.low(layout.words(value))
        plain = shift(layout, low, noise_key(ctx, str(ds.SOPInstanceUID)), record.nonce, record.strength, -1)
        if record.spare:
            spare = np.frombuffer(record.spare, dtype=layout.dtype).astype(plain.dtype)
            if spare.size != plain.size:
                raise PluginError("the record's spare bits do not match the pixel count")
            words = plain | spare
        else:
            words = layout.canonical(plain)
        ds.PixelData = layout.pack(words, value)

