"""Worker processes for the protect path, so that every core protects.

Parsing, de-identification, the privacy stages, sealing, encoding and the PHI gate of one
object need nothing of another object but the series' survey and keys, and hold the GIL
throughout: threads would not help, processes do. The parent keeps what is series-wide
(the survey, the study's data key from the spool's database, the order of the objects);
``gateway.protect`` gives each process a chunk of a batch and puts the results back in order.

The processes are spawned (fresh interpreters), not forked from the service (it runs
threads: pynetdicom, apscheduler, uploads; a fork would copy their held locks). Each loads
the keyring once (the initializer, which also sets up the service's logging and its value
filter) and each route's stages once. An error raised in a process comes back as itself
(a Quarantine, a PluginError, an OSError with its errno), so the worker decides quarantine
or retry as it does for work done in its own process.
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
    """A lazily started set of protect processes; ``close`` ends them.

    Each process is its own single-process executor, so that a task can be sent to the
    process that holds what an earlier task left there (``place``): a batch is parsed and
    de-identified by its processes, and, once the parent has the survey of all of them,
    finished (stages, seal, encode, gate) by the same processes, without parsing it again."""

    def __init__(self, keyring: Keyring, processes: int | None = None) -> None:
        self.keyring = keyring
        self.processes = processes or default_processes()
        self._lock = threading.Lock()
        self._executors: list[ProcessPoolExecutor | None] = [None] * self.processes

    def run(self, fn: Callable[..., _R], tasks: Iterable[tuple[Any, ...]],
            place: Iterable[int] | None = None) -> list[_R]:
        """``fn(*task)`` for every task, task ``n`` in process ``place[n]`` (default ``n`` modulo
        the processes); the results in task order. The first error is raised once the tasks
        not yet started are cancelled; a process that died (BrokenProcessPool) is replaced
        for the next call."""
        tasks = list(tasks)
        places = list(place) if place is not None else [n % self.processes for n in range(len(tasks))]
        futures: list[tuple[int, Future[_R]]] = [(at, self._started(at).submit(fn, *task))
                                                 for at, task in zip(places, tasks, strict=True)]
        try:
            return [future.result() for _, future in futures]
        except BaseException as exc:
            for _, future in futures:
                future.cancel()
            if isinstance(exc, BrokenProcessPool):
                for at, future in futures:
                    if future.done() and not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
                        self._discard(at)
            raise

    def warm(self) -> None:
        """Start the processes now, in the background (a service start), so the first series
        does not wait for them (spawning and importing took 1-2 s a process here)."""
        for at in range(self.processes):
            self._started(at).submit(int)

    def close(self) -> None:
        with self._lock:
            executors, self._executors = self._executors, [None] * self.processes
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def _started(self, at: int) -> ProcessPoolExecutor:
        with self._lock:
            executor = self._executors[at]
            if executor is None:
                executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=init_process,
                                               initargs=(self.keyring, logging.getLogger().level))
                self._executors[at] = executor
            return executor

    def _discard(self, at: int) -> None:
        with self._lock:
            executor, self._executors[at] = self._executors[at], None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
