"""Steps 1-5 of the paper for one series: order, features, hashes, index table.

Sender and receiver both call ``build``; given the same pixels and the same ordering it
returns the same table on any machine (integer arithmetic after a pinned, fixed-length
float64 low-rank step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from plugins.coverless import densenet_features, hashing, ordering, rpca
from plugins.coverless.features import series_features
from plugins.coverless.hashing import RowHashes
from plugins.coverless.index_table import ALPHABET, IndexTable
from plugins.coverless.working_image import render8, resample

WORKING_SIZE = 256
# Everything a receiver must do the same way; sealed in the record and checked on restore.
METHOD = {
    "working_size": WORKING_SIZE,
    "margin": hashing.MARGIN,
    "rpca": [rpca.RANK, rpca.OVERSAMPLE, rpca.POWER_ITERATIONS, rpca.ITERATIONS, rpca.RHO],
    "alphabet": ALPHABET,
}


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


def from_images(images: list[np.ndarray], order: list[int], used: str, workers: int = 0) -> SeriesTable:
    """The table of images already in working form, walked in ``order``."""
    feats = series_features([images[i] for i in order], workers)
    rows = hashing.row_hashes(hashing.difference_matrix(feats))
    return SeriesTable(order=order, ordering=used, rows=rows, table=IndexTable(rows))


def build(series: list[Dataset], mode: str, workers: int = 0) -> SeriesTable:
    if len(series) < 2:
        raise TableUnavailable("a series of one image has no neighbouring images")
    try:
        images = working_images(series)
    except ValueError as exc:  # working_image.UnsupportedImage
        raise TableUnavailable(str(exc)) from None
    order, used = series_order(series, images, mode)
    return from_images(images, order, used, workers)
