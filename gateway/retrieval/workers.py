"""Worker processes that fetch, restore and verify retrieval batches, so that both cores work.

The process that speaks DICOM to the workstation only sends; fetching from Orthanc,
opening envelopes, undoing transforms, hashing and the egress gate run in ``WORKERS``
processes (``sending.prepare``), each with its own keep-alive connection to Orthanc. The
pool starts at the first query or retrieval, with the 'forkserver' start method (the
gateway runs threads, and a forked copy of a threaded process may hold a lock forever; the
fork server is single-threaded and has imported the retrieval code once, so a worker starts
in milliseconds; the fork server is shared by the process, and whoever starts it first
names what it imports). Until the workers have started, batches are prepared in a thread
of this process as before, so no retrieval waits on process start. The workers' log
records come back to this process's handlers (and their filters). ``close`` (the
service's stop) ends the workers. A worker that dies fails the objects of its batches,
loudly, and the next batch gets a new pool.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker, shared_memory
from typing import Any, NamedTuple

from gateway import logsafe
from gateway.child_process import exit_with_parent
from gateway.config import Orthanc
from gateway.keyring import Keyring
from gateway.pacs_reader import PacsReader
from gateway.retrieval.planner import Planned
from gateway.retrieval.sending import Ready, Refused, prepare
from gateway.retrieval.vocabulary import Policy

log = logging.getLogger("gateway.qr")

WORKERS = 2
_reader: tuple[Orthanc, PacsReader] | None = None  # in a worker: its connection to Orthanc


class Workers:
    """Prepares retrieval batches in worker processes (see the module docstring)."""

    def __init__(self, settings: Orthanc, reader: PacsReader) -> None:
        self._settings = settings  # a reload does not change it: 'orthanc' needs a restart
        self._reader = reader
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._starter: threading.Thread | None = None
        self._warm = threading.Event()
        self._thread: ThreadPoolExecutor | None = None
        self._logs: logging.handlers.QueueListener | None = None

    def warm(self) -> None:
        """Start the workers now, in the background (a workstation that queries retrieves next)."""
        with self._lock:
            self._running_pool()

    def submit(self, batch: list[Planned], policy: Policy, keyring: Keyring) -> Future[list[Ready | Refused]]:
        with self._lock:
            pool = self._running_pool()
            if self._warm.is_set():
                try:
                    return _received(pool.submit(_prepare, batch, policy, self._settings, keyring))
                except BrokenProcessPool:
                    log.error("a retrieval worker process died; starting new ones")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    self._running_pool()
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qr-prepare")
            return self._thread.submit(prepare, batch, policy, self._reader.file, keyring)

    def close(self) -> None:
        """End the workers (the service's stop); a later retrieval starts them again."""
        with self._lock:
            pool, starter, thread, logs = self._pool, self._starter, self._thread, self._logs
            self._pool, self._starter, self._thread, self._logs = None, None, None, None
            self._warm.clear()
        if starter is not None:
            starter.join()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)
        if logs is not None:
            logs.stop()

    def _running_pool(self) -> ProcessPoolExecutor:
        """The pool, created if there is none; its processes start in a thread, since
        starting the first one waits until the fork server has imported the gateway."""
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            main = getattr(sys.modules["__main__"].__spec__, "name", None)  # workers import it again
            context.set_forkserver_preload([__name__, *([main] if main else [])])
            self._warm.clear()
            if self._logs is None:
                self._logs = logging.handlers.QueueListener(context.Queue(), _Relay())
                self._logs.start()
            self._pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=context, initializer=_log_to,
                                             initargs=(self._logs.queue, logging.getLogger().level))
            self._starter = threading.Thread(target=self._start, args=(self._pool,), name="qr-workers-start",
                                             daemon=True)
            self._starter.start()
        return self._pool

    def _start(self, pool: ProcessPoolExecutor) -> None:
        try:
            started = [pool.submit(_started) for _ in range(WORKERS)]
            started[0].result()
        except Exception as exc:  # noqa: BLE001 - preparing stays in this process's thread
            log.error("the retrieval worker processes did not start (%s); restoring in the gateway's own process",
                      type(exc).__name__)
            return
        with self._lock:
            if self._pool is pool:
                self._warm.set()


class _Relay(logging.Handler):
    """A worker's log record, handled here as if logged here."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _log_to(queue: Any, level: int) -> None:
    """A worker's logging as the gateway's (libraries tuned down, their warnings silenced),
    every record going to the gateway process (``_Relay``), where the filters are."""
    exit_with_parent()
    logsafe.configure()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))
    root.setLevel(level)


def _started() -> None:
    """Runs first in each worker: by then it has imported what preparing needs."""


def _prepare(batch: list[Planned], policy: Policy, settings: Orthanc, keyring: Keyring) -> _Shipped:
    """``sending.prepare`` in a worker, fetching over the worker's own connection."""
    global _reader
    if _reader is None or _reader[0] != settings:
        _reader = (settings, PacsReader(settings))
    return _Shipped.of(prepare(batch, policy, _reader[1].file, keyring))


class _Shipped(NamedTuple):
    """A worker's batch on its way back: the objects' bytes in one shared memory block (a
    copy in and a copy out, where a pipe would take the pickled bytes in 64 KiB pieces,
    waking the gateway process for each), the rest pickled as usual."""

    block: str | None
    items: list[tuple[int, int, Ready] | Refused]

    @classmethod
    def of(cls, prepared: list[Ready | Refused]) -> _Shipped:
        size = sum(len(r.data) for r in prepared if isinstance(r, Ready))
        if not size:
            return cls(None, list(prepared))  # type: ignore[arg-type]  # Refused only
        block = shared_memory.SharedMemory(create=True, size=size)
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]  # the gateway process unlinks it
        buf = block.buf
        assert buf is not None
        try:
            items: list[tuple[int, int, Ready] | Refused] = []
            start = 0
            for r in prepared:
                if isinstance(r, Refused):
                    items.append(r)
                    continue
                buf[start:start + len(r.data)] = r.data
                items.append((start, len(r.data), r._replace(data=b"")))
                start += len(r.data)
        except BaseException:
            block.close()
            block.unlink()
            raise
        del buf
        block.close()
        return cls(block.name, items)

    def unpacked(self) -> list[Ready | Refused]:
        """The batch as ``prepare`` returned it; the shared block is gone afterwards."""
        if self.block is None:
            return list(self.items)  # type: ignore[arg-type]  # Refused only
        block = shared_memory.SharedMemory(name=self.block)
        buf = block.buf
        assert buf is not None
        try:
            return [item if isinstance(item, Refused) else item[2]._replace(data=bytes(buf[item[0]:item[0] + item[1]]))
                    for item in self.items]
        finally:
            del buf
            block.close()
            block.unlink()


def _received(shipped: Future[_Shipped]) -> Future[list[Ready | Refused]]:
    """The batch a worker prepares, unpacked in this process as soon as it arrives (so that
    its shared block never outlives it, cancelled or not)."""
    out: Future[list[Ready | Refused]] = Future()
    out.add_done_callback(lambda f: f.cancelled() and shipped.cancel())

    def settle(done: Future[_Shipped]) -> None:
        try:
            batch = done.result().unpacked()
        except BaseException as exc:  # noqa: BLE001 - the worker's failure (or cancel) is the batch's
            if out.set_running_or_notify_cancel():
                out.set_exception(exc)
            return
        if out.set_running_or_notify_cancel():
            out.set_result(batch)

    shipped.add_done_callback(settle)
    return out
