"""Per-image features of a whole series, spread over a pool of worker processes.

Method 1 (the paper's): ROI -> median -> low-rank -> LBP sums; method 2: ROI -> median ->
intensity sums. Each image is independent, so the work splits cleanly across processes.
Every worker pins BLAS to one thread: OpenBLAS is slower with two threads than one on these
small SVDs, and two workers already use two cores.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from plugins.coverless import intensity_features
from plugins.coverless.body_roi import roi_filtered
from plugins.coverless.lbp_features import feature_rows
from plugins.coverless.rpca import low_rank

# Below this many images a pool costs more to start (about a second) than it saves.
POOL_THRESHOLD = 48


def image_features(img8: np.ndarray) -> np.ndarray:
    """(4, 9) int64 LBP sums of one working image (method 1)."""
    return feature_rows(low_rank(roi_filtered(img8)))


# method version -> per-image features (top-level functions: the pool pickles them)
PER_IMAGE = {1: image_features, 2: intensity_features.feature_rows}


def one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def series_features(images: list[np.ndarray], workers: int = 0, method: int = 1) -> np.ndarray:
    """(N, 4, 9) int64 features of the images, in the order given."""
    per_image = PER_IMAGE[method]
    workers = workers or default_workers()
    if workers <= 1 or len(images) < POOL_THRESHOLD:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return np.stack([per_image(img) for img in images])
    # spawn, not fork: the gateway process runs threads (listener, scheduler)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=one_blas_thread) as pool:
        chunk = max(1, len(images) // (workers * 4))
        return np.stack(list(pool.map(per_image, images, chunksize=chunk)))
