"""Steps 1-6 of the paper for one series: order, features, hashes (and for method 1 the
index table).

Sender and receiver both build it; given the same pixels and the same ordering they get
the same table on any machine. Method 1 (the paper's LBP features, records of version 1)
is integer arithmetic after a pinned, fixed-length float64 low-rank step; method 2
(intensity features, window differences, cells carried by vote) is integer throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from plugins.coverless import carriers, densenet_features, hashing, ordering, rpca
from plugins.coverless.features import series_features
from plugins.coverless.hashing import RowHashes
from plugins.coverless.index_table import ALPHABET, IndexTable
from plugins.coverless.working_image import render8, resample

WORKING_SIZE = 256
# Everything a receiver must do the same way; sealed in the record and checked on restore.
# Method 1 is what version-1 records hold (kept so they still restore); method 2 protects.
METHOD = {
    "working_size": WORKING_SIZE,
    "margin": hashing.MARGIN,
    "rpca": [rpca.RANK, rpca.OVERSAMPLE, rpca.POWER_ITERATIONS, rpca.ITERATIONS, rpca.RHO],
    "alphabet": ALPHABET,
}
METHOD_2 = {"working_size": WORKING_SIZE, "features": "roi-median-intensity-sums", "votes": carriers.VOTES}
# Images per side of a method-2 window difference (fewer for short series, see ``window``).
WINDOW = 8


class TableUnavailable(ValueError):
    """No table can be built for this series (message without PHI)."""


@dataclass(frozen=True)
class SeriesTable:
    order: list[int]  # indices into the series as given, in table order
    ordering: str  # "geometry" or "densenet"
    rows: RowHashes
    table: IndexTable


def working_images(series: list[Dataset]) -> list[np.ndarray]:
    return [resample(render8(ds), WORKING_SIZE) for ds in series]


def series_order(series: list[Dataset], images: list[np.ndarray], mode: str) -> tuple[list[int], str]:
    """The order of the series and the way it was found ("geometry" or "densenet")."""
    if mode in ("auto", "geometry"):
        order = ordering.geometry_order(series)
        if order is not None:
            return order, "geometry"
        if mode == "geometry":
            raise TableUnavailable("the series has no distinct slice positions or instance numbers")
    try:
        feats = ordering.quantised(densenet_features.features(images))
    except densenet_features.ModelUnavailable as exc:
        raise TableUnavailable(f"densenet ordering: {exc}") from None
    return ordering.feature_order(feats, images), "densenet"


@dataclass(frozen=True)
class CellTable:
    """Method 2: the signed cell values (``9 * w_i - sum(w)``) of the window differences."""

    order: list[int]
    ordering: str
    window: int
    values: np.ndarray  # int64, one per cell (row * 9 + bit)

    def digest_bytes(self) -> bytes:
        """The hash bits of every cell (table identity)."""
        return np.packbits((self.values >= 0).astype(np.uint8)).tobytes()


def window(count: int) -> int:
    """Images per side of a window difference: ``WINDOW``, fewer when the series is short
    (a window of w leaves count - 2w + 1 rows)."""
    return max(1, min(WINDOW, count // 8))


def from_images(images: list[np.ndarray], order: list[int], used: str, workers: int = 0) -> SeriesTable:
    """The method-1 table of images already in working form, walked in ``order``."""
    feats = series_features([images[i] for i in order], workers)
    rows = hashing.row_hashes(hashing.difference_matrix(feats))
    return SeriesTable(order=order, ordering=used, rows=rows, table=IndexTable(rows))


def cells_from_images(images: list[np.ndarray], order: list[int], used: str, size: int,
                      workers: int = 0) -> CellTable:
    """The method-2 table of images already in working form, walked in ``order``."""
    feats = series_features([images[i] for i in order], workers, method=2)
    values = hashing.cell_values(hashing.window_differences(feats, size)).ravel()
    return CellTable(order=order, ordering=used, window=size, values=values)


def _prepared(series: list[Dataset], mode: str) -> tuple[list[np.ndarray], list[int], str]:
    if len(series) < 2:
        raise TableUnavailable("a series of one image has no neighbouring images")
    try:
        images = working_images(series)
    except ValueError as exc:  # working_image.UnsupportedImage
        raise TableUnavailable(str(exc)) from None
    order, used = series_order(series, images, mode)
    return images, order, used


def build(series: list[Dataset], mode: str, workers: int = 0) -> SeriesTable:
    """Method 1 (the paper's index table); restores version-1 records."""
    return from_images(*_prepared(series, mode), workers)


def build_cells(series: list[Dataset], mode: str, workers: int = 0, size: int = 0) -> CellTable:
    """Method 2; ``size`` is the window (0: the one ``window`` gives this series)."""
    images, order, used = _prepared(series, mode)
    return cells_from_images(images, order, used, size or window(len(series)), workers)
