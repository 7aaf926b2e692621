"""The order of the images of a series, rebuilt identically by sender and receiver.

Two ways, as the route's ``ordering`` setting chooses:

- ``geometry``: position along the slice normal (Image Position/Orientation Patient), else
  Instance Number. Exact, free, and untouched by anything done to the pixels; both
  attributes survive de-identification (PS3.15 keeps them).
- ``densenet`` (the paper's way): features of the shipped SliceDenseNet, quantised to
  integers, then a chain of nearest neighbours from one end of the series. Integer
  distances and content-derived tie-breaks make it independent of the order received.

``auto`` (the default) takes geometry where every instance has a distinct position and
falls back to the network otherwise.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation

import numpy as np
from pydicom.dataset import Dataset

ORDERINGS = ("auto", "geometry", "densenet")
# Features are rounded to 1/FEATURE_SCALE before any distance is taken.
FEATURE_SCALE = 256


def geometry_order(series: list[Dataset]) -> list[int] | None:
    """Indices sorted by position along the slice normal (micrometres, exact), else by
    Instance Number; None when neither gives every instance a distinct place."""
    keys = _positions(series)
    if keys is None or len(set(keys)) != len(keys):
        keys = _instance_numbers(series)
    if keys is None or len(set(keys)) != len(keys):
        return None
    return sorted(range(len(series)), key=lambda i: keys[i])


def _positions(series: list[Dataset]) -> list[int] | None:
    """Position along the common slice normal in micrometres, in exact decimal arithmetic."""
    try:
        orientations = {tuple(Decimal(str(v)) for v in ds.ImageOrientationPatient) for ds in series}
        if len(orientations) != 1:
            return None
        (o,) = orientations
        r, c = o[:3], o[3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        out = []
        for ds in series:
            p = [Decimal(str(v)) for v in ds.ImagePositionPatient]
            along = sum((a * b for a, b in zip(p, normal, strict=True)), Decimal(0))
            out.append(int((along * 1000).to_integral_value()))
        return out
    except (AttributeError, InvalidOperation, TypeError, ValueError, IndexError):
        return None


def _instance_numbers(series: list[Dataset]) -> list[int] | None:
    try:
        return [int(ds.InstanceNumber) for ds in series]
    except (AttributeError, TypeError, ValueError):
        return None


def quantised(features: np.ndarray) -> np.ndarray:
    """Float features -> int64 on a fixed grid, the only form distances are taken from."""
    return np.rint(np.asarray(features, dtype=np.float64) * FEATURE_SCALE).astype(np.int64)


def feature_order(features: np.ndarray, images: list[np.ndarray]) -> list[int]:
    """Order by integer features: start at one end of the series' diameter, then always
    step to the nearest image not yet placed. Ties break by a digest of the image bytes,
    never by the order received."""
    n = len(images)
    if n <= 2:
        return sorted(range(n), key=lambda i: hashlib.sha256(images[i].tobytes()).digest())
    rank = np.empty(n, dtype=np.int64)
    rank[sorted(range(n), key=lambda i: hashlib.sha256(images[i].tobytes()).digest())] = np.arange(n)
    sq = (features * features).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * (features @ features.T)

    def farthest(i: int) -> int:
        row = dist[i]
        candidates = np.flatnonzero(row == row.max())
        return int(candidates[np.argmin(rank[candidates])])

    a = farthest(int(np.argmin(rank)))
    b = farthest(a)
    current = a if rank[a] < rank[b] else b
    order = [current]
    free = np.ones(n, dtype=bool)
    free[current] = False
    for _ in range(n - 1):
        row = np.where(free, dist[current], np.iinfo(np.int64).max)
        candidates = np.flatnonzero(row == row.min())
        current = int(candidates[np.argmin(rank[candidates])])
        order.append(current)
        free[current] = False
    return order
