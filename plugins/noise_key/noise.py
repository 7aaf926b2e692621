"""Keyed Gaussian noise that every machine regenerates bit for bit.

The noise is the key of the PPDD scheme, so it must come from a cryptographic stream
(AES-256-CTR under a key derived from the study's data key), not from a statistical PRNG:
PCG64 or Mersenne Twister state can be recovered from a few hundred outputs, and an
attacker who knows some pixels (air outside the body is constant) would learn outputs.

The Gaussian shape comes from the sum of 12 keyed uniform 32-bit integers (Irwin-Hall,
the classic approximation, support +-6 sd). Box-Muller would need ``log``/``cos``, whose
last bit differs between libm and SIMD builds; an exact restore cannot depend on that.
Here the only float steps are one multiply and a round-half-even, which IEEE 754 fixes
exactly, so a restore on another CPU or numpy version subtracts the very same integers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TERMS = 12  # uniforms summed per sample
_UNIFORM_MAX = 2**32 - 1
_MEAN = TERMS * _UNIFORM_MAX / 2  # exact in float64
_SD = float(np.sqrt(TERMS * ((_UNIFORM_MAX + 1) ** 2 - 1) / 12))
CHUNK = 1 << 20  # samples per block, bounds memory on large multi-frame objects


def gaussian_chunks(key: bytes, nonce: bytes, count: int, sigma: float) -> Iterator[np.ndarray]:
    """Integer noise ``round(sigma * z)`` (int64), ``count`` samples in blocks of ``CHUNK``.

    ``key`` is 32 bytes, ``nonce`` 16 bytes (the initial counter block). The blocks
    concatenate to the same sequence however they are consumed.
    """
    stream = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    scale = sigma / _SD
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        raw = stream.update(bytes(4 * TERMS * n))
        sums = np.frombuffer(raw, dtype="<u4").reshape(n, TERMS).sum(axis=1, dtype=np.uint64)
        yield np.rint((sums.astype(np.float64) - _MEAN) * scale).astype(np.int64)


def gaussian(key: bytes, nonce: bytes, count: int, sigma: float) -> np.ndarray:
    """All ``count`` samples at once (for images that fit in memory)."""
    parts = list(gaussian_chunks(key, nonce, count, sigma))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
