"""Worker processes for the protect path, so that every core protects.

Parsing, de-identification, the privacy stages, sealing, encoding and the PHI gate of one
object need nothing of another object but the series' survey and keys, and hold the GIL
throughout: threads would not help, processes do. The parent keeps what is series-wide
(the survey, the study's data key from the spool's database, the order of the objects);
``gateway.protect`` gives each process a chunk of a batch and puts the results back in order.

The processes are spawned (fresh interpreters), not forked from the service (it runs
threads: pynetdicom, apscheduler, uploads; a fork would copy their held locks), on first
use. Not from a forkserver either: its socket goes to the temporary folder, which the
listener points at the spool's ``receiving/`` (a socket there, with a path too long for
AF_UNIX under a deep spool, measured). Each
loads the keyring once (the initializer, which also sets up the service's logging and its value filter) and each
route's stages once. An error raised in a
process comes back as itself (a Quarantine, a PluginError, an OSError with its errno), so
the worker decides quarantine or retry as it does for work done in its own process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gateway.keyring import Keyring
from gateway.protect import init_process

_R = TypeVar("_R")


def default_processes() -> int:
    """One process per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


class ProtectPool:
    """A lazily started pool of protect processes; ``close`` ends them."""

    def __init__(self, keyring: Keyring, processes: int | None = None) -> None:
        self.keyring = keyring
        self.processes = processes or default_processes()
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def run(self, fn: Callable[..., _R], tasks: Iterable[tuple[Any, ...]]) -> list[_R]:
        """``fn(*task)`` for every task in the processes; the results in task order. The
        first error is raised once the tasks not yet started are cancelled; a process that
        died (BrokenProcessPool) leaves a fresh pool for the next call."""
        executor = self._started()
        futures: list[Future[_R]] = [executor.submit(fn, *task) for task in tasks]
        try:
            return [future.result() for future in futures]
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if isinstance(exc, BrokenProcessPool):
                self._discard(executor)
            raise

    def warm(self) -> None:
        """Start the processes now, in the background (a service start), so the first series
        does not wait for them (spawning and importing took 1-2 s a process here)."""
        executor = self._started()
        for _ in range(self.processes):
            executor.submit(int)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.processes, mp_context=context, initializer=init_process,
                                                     initargs=(self.keyring, logging.getLogger().level))
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)
