"""Method 2's mapping: every bit of the identity is carried by several cells of the hash
table, chosen for their margin, and read back by a vote.

The paper maps a character to one 9-bit row, so one flipped bit of 9 loses the character.
Here a cell is one hash bit (row m, bit i; numbered ``9 * m + i``) and the identity's UTF-8
bits are each carried by ``VOTES`` cells whose bit has that value. The sender takes cells
by their distance from flipping (largest first), dealt out in turns so every identity bit
gets one of the strongest cells, one of the next, and so on; no cell carries two bits while
the series has enough of them. The receiver takes the majority of each bit's cells and,
when the keyed digest disagrees, tries flipping the least certain bits (the narrowest
majorities, then the smallest sum of the cells' signed values): the digest, not the vote,
decides what is returned. A plain majority, not the sum, decides the bit: one cell an
attack pushed far to the wrong side must not outvote the others (measured: rotation).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations

import numpy as np

VOTES = 5
# Bits the receiver may flip when the vote's identity fails the digest: subsets of up to
# FLIP_DEPTH of the FLIP_CANDIDATES least certain bits (1 + 16 + 120 + 560 digests at most).
FLIP_CANDIDATES = 16
FLIP_DEPTH = 3


class CannotCarry(ValueError):
    """The table has no usable cell of a needed bit value."""


def to_bits(text: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(text.encode(), dtype=np.uint8)).astype(np.int64)


def from_bits(bits: np.ndarray) -> str | None:
    """The text, or None when the bits are not UTF-8."""
    try:
        return np.packbits(bits.astype(np.uint8)).tobytes().decode()
    except UnicodeDecodeError:
        return None


def pools(values: np.ndarray) -> dict[int, np.ndarray]:
    """Cells whose bit is 0 and 1, strongest first (ties by cell number). Cells exactly on
    the threshold are left out: the smallest change flips them."""
    out = {}
    for bit in (0, 1):
        cells = np.flatnonzero(((values >= 0) == bool(bit)) & (values != 0))
        out[bit] = cells[np.lexsort((cells, -np.abs(values[cells])))]
    return out


def encode(values: np.ndarray, texts: dict[str, str], votes: int = VOTES) -> dict[str, list[int]]:
    """Cell numbers carrying every text (``votes`` per bit), keyword by keyword."""
    keywords = sorted(texts)
    bits = [to_bits(texts[k]) for k in keywords]
    allbits = np.concatenate(bits) if bits else np.zeros(0, dtype=np.int64)
    cells = np.zeros((len(allbits), votes), dtype=np.int64)
    for bit, pool in pools(values).items():
        where = np.flatnonzero(allbits == bit)
        if not len(where):
            continue
        if len(pool) < votes:
            raise CannotCarry(f"fewer than {votes} cells of bit {bit}")
        # round-robin tiers: the j-th cell of every such identity bit comes from tier j;
        # a small series reuses cells (np.resize cycles) rather than refusing
        cells[where] = np.resize(pool, len(where) * votes).reshape(votes, len(where)).T
    out, start = {}, 0
    for keyword, b in zip(keywords, bits, strict=True):
        out[keyword] = cells[start : start + len(b)].ravel().tolist()
        start += len(b)
    return out


def candidates(values: np.ndarray, carried: dict[str, list[int]], votes: int = VOTES) -> Iterator[dict[str, str]]:
    """Identities read from the cells: the vote first, then with the least certain bits
    flipped. Raises IndexError for a cell number outside the table."""
    keywords = sorted(carried)
    cells = [np.asarray(carried[k], dtype=np.int64).reshape(-1, votes) for k in keywords]
    if any(len(c) and (c.min() < 0 or c.max() >= len(values)) for c in cells):
        raise IndexError("a cell number is outside the rebuilt table")
    read = np.concatenate([values[c] for c in cells]) if cells else np.zeros((0, votes), dtype=np.int64)
    ones = (read >= 0).sum(axis=1)
    bits = (2 * ones > votes).astype(np.int64)
    bounds = np.cumsum([0] + [len(c) for c in cells])
    doubtful = np.lexsort((np.abs(read.sum(axis=1)), np.abs(2 * ones - votes)))[:FLIP_CANDIDATES]
    for depth in range(FLIP_DEPTH + 1):
        for flips in combinations(doubtful.tolist(), depth):
            trial = bits.copy()
            trial[list(flips)] ^= 1
            texts = [from_bits(trial[bounds[i] : bounds[i + 1]]) for i in range(len(keywords))]
            if all(t is not None for t in texts):
                yield dict(zip(keywords, texts, strict=True))  # type: ignore[arg-type]  # texts holds no None once all decoded
