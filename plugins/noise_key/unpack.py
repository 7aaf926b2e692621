"""Edge-side unpacking of an altered protected copy (the PPDD paper's authorized edge).

A PACS may keep or serve a lossy copy (JPEG transcoding). Subtracting the keyed noise
from it gives ``original + error (mod 2**BitsStored)``; ``unwrap`` then picks, for the
whole image, the window of width ``2**BitsStored`` that cuts the circle where the fewest
values lie, so a small negative error on air (stored 0) comes back as -3, not 4093.
The learned denoiser (``models/noise_key_denoiser.py``) takes this unwrapped image.
"""

from __future__ import annotations

import numpy as np

from gateway.plugin import Context
from plugins.noise_key import noise_key
from plugins.noise_key.noise import gaussian
from plugins.noise_key.record import Record

MAX_BINS = 256


def unwrap(values: np.ndarray, modulus: int, signed: bool) -> np.ndarray:
    """Values mod ``modulus`` as floats in one window of width ``modulus``.

    The window is cut in the middle of an empty stretch of the circle (circular histogram,
    256 bins, fewer for small images so that a bin holds 16 values on average) at least
    1/8 of the circle long (else the longest one): of those, the cut
    that moves the fewest values out of the natural window ([0, modulus) unsigned,
    [-modulus/2, modulus/2) signed), ties going to the cut nearest the natural one. Without
    a clearly empty stretch (the image is noise) the natural window stays. Images that fill
    their whole range (8-bit photos) leave no such stretch where it matters, so the choice
    can be wrong for them: it is meant for CT and MR, which keep headroom."""
    wrapped = np.mod(values.astype(np.float64), modulus)
    bins = int(np.clip(2 ** np.floor(np.log2(max(values.size, 1) / 16)), 16, MAX_BINS))
    counts = np.bincount((wrapped.ravel() * bins / modulus).astype(np.int64).clip(0, bins - 1), minlength=bins)
    natural = -modulus / 2 if signed else 0.0
    if counts.min() > counts.mean() / 4:
        return natural + np.mod(wrapped - natural, modulus)
    empty = counts <= counts.min() + 0.0005 * values.size
    start = int(np.argmin(empty))  # a full bin: runs of empty bins do not wrap past it
    runs = _runs(np.roll(empty, -start))
    longest = max(length for _, length in runs)
    best: tuple[int, float, float] | None = None
    for first, length in runs:
        if length < min(bins // 8, longest):
            continue
        cut = (start + first + length / 2) % bins * modulus / bins
        low = cut - modulus * round((cut - natural) / modulus)
        placed = low + np.mod(wrapped - low, modulus)
        moved = int(np.count_nonzero((placed < natural) | (placed >= natural + modulus)))
        score = (moved, abs(low - natural), low)
        best = score if best is None or score < best else best
    assert best is not None
    return best[2] + np.mod(wrapped - best[2], modulus)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first index, length) of each run of True in ``flags``."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def unpack(copy: np.ndarray, record: bytes, ctx: Context, sop_uid: str, bits_stored: int, signed: bool) -> np.ndarray:
    """The altered protected copy ``copy`` (stored values, the original's sample order and
    geometry) minus its keyed noise, unwrapped; float64 in stored-value units."""
    rec = Record.decode(record)
    modulus = 1 << bits_stored
    noise = gaussian(noise_key(ctx, sop_uid), rec.nonce, copy.size, rec.strength * modulus)
    return unwrap(copy.astype(np.float64) - noise.reshape(copy.shape), modulus, signed)
