"""The cheap detectors (roi, tophat) over many frames, spread over worker processes.

A 90-frame clip is 90 independent searches; threads would share one core (the detectors
are numpy and scipy calls that mostly hold the GIL), so they run in processes. The
frames go through one shared-memory copy (no per-task pickling of pixels) and each
worker holds one frame's temporaries at a time, so memory stays at one more copy of the
grey clip (8-bit frames stay 8-bit) and a few frames. The pool starts once per process
(forkserver: no fork of a threaded gateway) and is reused. In a worker process (the
gateway's protect processes, which already spread objects over the cores) the frames are
searched in that process.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from gateway.child_process import exit_with_parent
from gateway.redaction import roi, tophat
from gateway.redaction.boxes import Box

MIN_FRAMES = 4  # fewer frames are searched here: starting work elsewhere costs more
_pools: dict[int, Executor] = {}
_lock = threading.Lock()
log = logging.getLogger("gateway.redaction")


def cheap_boxes(frame: np.ndarray, detectors: Sequence[str]) -> dict[str, list[Box]]:
    """The boxes each named cheap detector finds in one grey frame."""
    found: dict[str, list[Box]] = {}
    if "roi" in detectors:
        found["roi"] = roi.detect(frame)
    if "tophat" in detectors:
        found["tophat"] = tophat.detect(frame)
    return found


def map_frames(grey: np.ndarray, indices: list[int], detectors: Sequence[str],
               workers: int) -> list[dict[str, list[Box]]]:
    """``cheap_boxes`` of each frame in ``indices`` of ``grey``, in order.

    A pool that breaks (a worker killed) is dropped and the frames are searched here.
    """
    pool = _pool(workers) if workers > 1 and len(indices) >= MIN_FRAMES else None
    if pool is not None:
        try:
            return _in_pool(pool, grey, indices, tuple(detectors), workers)
        except BrokenProcessPool:
            log.warning("a redaction worker process died; searching the frames in this process")
            with _lock:
                _pools.pop(workers, None)
            pool.shutdown(wait=False, cancel_futures=True)
    return [cheap_boxes(grey[f], detectors) for f in indices]


def _in_pool(pool: Executor, grey: np.ndarray, indices: list[int], detectors: tuple[str, ...],
             workers: int) -> list[dict[str, list[Box]]]:
    shm = shared_memory.SharedMemory(create=True, size=max(grey.nbytes, 1))
    try:
        np.ndarray(grey.shape, grey.dtype, shm.buf)[:] = grey
        step = -(-len(indices) // (workers * 4))  # a few chunks a worker: an even finish
        futures = [pool.submit(_search, shm.name, grey.shape, grey.dtype.str, indices[i : i + step], detectors)
                   for i in range(0, len(indices), step)]
        return [boxes for future in futures for boxes in future.result()]
    finally:
        shm.close()
        shm.unlink()


def _search(name: str, shape: tuple[int, ...], dtype: str, indices: list[int],
            detectors: tuple[str, ...]) -> list[dict[str, list[Box]]]:
    shm = shared_memory.SharedMemory(name=name)
    try:
        return [cheap_boxes(np.ndarray(shape, np.dtype(dtype), shm.buf)[f], detectors) for f in indices]
    finally:
        shm.close()


def _pool(workers: int) -> Executor | None:
    if multiprocessing.parent_process() is not None:
        return None  # a worker process already: its pool (the protect pool) spreads the work over the cores
    with _lock:  # the gateway's threads share one pool
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                                             initializer=exit_with_parent)
        return pool


@atexit.register
def _shutdown() -> None:
    for pool in _pools.values():
        pool.shutdown(cancel_futures=True)
