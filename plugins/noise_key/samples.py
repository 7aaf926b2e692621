"""The samples of a native (uncompressed) pixel data value, as unsigned words.

Noise is added to the low ``BitsStored`` bits of each word, modulo ``2**BitsStored``, so
the protected object keeps every attribute of the original (no wider type, no clipping).
The spare bits above ``BitsStored`` are rewritten canonically (sign extension for signed
pixels, zero otherwise): keeping the original's would leak its sign, which for signed CT
tells tissue from air. When the original's spare bits are not canonical (overlays of old
modalities), the caller keeps them in the sealed record.

Bit-packed 1-bit pixels (binary segmentations) are one sample per bit, modulo 2: noise
of strength 1 is then a keyed one-time pad. The unused bits of their last byte are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from gateway.plugin import PluginError


@dataclass(frozen=True)
class SampleLayout:
    """How the samples are stored: word size, significant bits, sign, byte order."""

    bits_allocated: int
    bits_stored: int
    signed: bool
    little_endian: bool
    length: int  # bytes that hold samples; anything after them is padding, left as is
    count: int  # samples

    @classmethod
    def of(cls, ds: Dataset) -> SampleLayout:
        allocated = int(ds.get("BitsAllocated", 0))
        stored = int(ds.get("BitsStored", allocated))
        if allocated not in (1, 8, 16, 32):
            raise PluginError(f"BitsAllocated {allocated} is not supported (1, 8, 16 or 32)")
        if not 1 <= stored <= allocated:
            raise PluginError(f"BitsStored {stored} does not fit BitsAllocated {allocated}")
        try:
            length = int(get_expected_length(ds, unit="bytes"))
            count = length * 8 // allocated if allocated > 1 else int(get_expected_length(ds, unit="pixels"))
        except (AttributeError, TypeError, ValueError):
            raise PluginError("the pixel attributes (Rows, Columns, frames, samples) are unusable") from None
        if len(ds.PixelData) < length:
            raise PluginError("pixel data is shorter than Rows, Columns and frames say")
        return cls(allocated, stored, int(ds.get("PixelRepresentation", 0)) == 1,
                   ds.file_meta.TransferSyntaxUID.is_little_endian, length, count)

    @property
    def modulus(self) -> int:
        return 1 << self.bits_stored

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"{'<' if self.little_endian else '>'}u{max(self.bits_allocated // 8, 1)}")

    def words(self, value: bytes) -> np.ndarray:
        """The samples as unsigned integers in native byte order (a copy)."""
        if self.bits_allocated == 1:
            return np.unpackbits(np.frombuffer(value, np.uint8, count=self.length), count=self.count,
                                 bitorder="little")
        return np.frombuffer(value, dtype=self.dtype, count=self.count).astype(self.dtype.newbyteorder("="))

    def pack(self, words: np.ndarray, value: bytes) -> bytes:
        """``words`` in the stored byte order, followed by ``value``'s original padding."""
        if self.bits_allocated == 1:
            packed = np.packbits(words.astype(np.uint8), bitorder="little")
            used = self.count % 8
            if used:  # the last byte's unused bits stay as they were
                packed[-1] |= value[self.count // 8] & (0xFF ^ ((1 << used) - 1))
            return packed.tobytes() + bytes(value[self.length :])
        return words.astype(self.dtype).tobytes() + bytes(value[self.length :])

    def low(self, words: np.ndarray) -> np.ndarray:
        return words & np.asarray(self.modulus - 1, dtype=words.dtype)

    def canonical(self, low: np.ndarray) -> np.ndarray:
        """Words whose spare bits are the sign extension (signed) or zero (unsigned)."""
        if not self.signed or self.bits_stored == self.bits_allocated:
            return low
        spare = np.asarray(((1 << self.bits_allocated) - 1) ^ (self.modulus - 1), dtype=low.dtype)
        negative = (low >> np.asarray(self.bits_stored - 1, dtype=low.dtype)) & np.asarray(1, dtype=low.dtype)
        return np.where(negative.astype(bool), low | spare, low)

    def values(self, low: np.ndarray) -> np.ndarray:
        """Stored values (signed where the pixels are signed), as int64, for analysis."""
        v = low.astype(np.int64)
        return np.where(v >= self.modulus // 2, v - self.modulus, v) if self.signed else v
