"""pynetdicom's two reactors, woken by their events instead of polling every millisecond.

Each pynetdicom 3.0 association runs two loops: the DUL reactor (socket and state
machine) sleeps 1 ms whenever a turn found nothing to do, and the association reactor
(which hands decoded messages to the handlers) sleeps 1 ms at the top of every turn.
On one association of 526 KB CT objects each C-STORE waited about 2 ms for being
noticed: the peer's next request, the decoded message, the response (``BENCHMARKS.md``,
issue 16). Polling faster costs CPU on every idle association.

Here the two sleeps become waits that end as soon as there is something to do, or after
``MAX_WAIT`` (the loops' timers, ARTIM and the idle timeout, are checked at least that
often):

- the DUL waits in ``select`` on its socket and on a wake-up socket pair, written when a
  primitive is queued for it to send, or when it is told to stop;
- the association reactor waits on an event, set when the DUL queues a decoded message or
  an ACSE primitive for it, when it is told to stop, or when a sending thread asks it to
  pause (``_reactor_checkpoint``).

A thread that sends on an association (``send_c_store``, a Storage Commitment report)
pauses its reactor first and then reads ``_is_paused`` without a lock; read stale, the
reactor takes the answer that thread waits for, logs "unexpected ... service message",
drops it, and the sender waits out the DIMSE timeout (a C-MOVE then fails every remaining
sub-operation). pynetdicom's own polling makes that rare; a reactor woken by the very answer
makes it common (one run in 15 of fifty C-ECHOs back to back). So an answer the reactor
takes goes back on the queue, without waking the reactor, where the sender finds it.

Only the two reactor loops' own sleeps change (told apart by the calling code object);
every other ``time.sleep`` in pynetdicom is left alone. ``install`` checks that the loops
still call ``time.sleep`` the way pynetdicom 3.0.4 does and otherwise leaves pynetdicom
as it is (its own polling works, only slower).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any

from pynetdicom import association as association_module
from pynetdicom import dul as dul_module
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger("gateway.prompt_reactors")

# The longest a reactor waits without an event: its timers are checked at least this often.
MAX_WAIT = 0.05

_real_sleep = time.sleep
_installed: bool | None = None  # what install() returned, once it ran
_install_lock = threading.Lock()


class _Wakeup:
    """One association's wake-ups: an event for its reactor, a socket pair for its DUL."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._closed = False
        self.dul_waiting = False

    def wake_reactor(self) -> None:
        self.event.set()

    def wake_all(self) -> None:
        self.event.set()
        self.wake_dul()

    def wake_dul(self) -> None:
        if self.dul_waiting:  # a write only when the DUL sleeps in select (rare)
            with self._lock:
                if not self._closed:
                    try:
                        self._writer.send(b"\0")
                    except OSError:  # full (it is awake anyway) or closed
                        pass

    def reactor_wait(self) -> None:
        self.event.wait(MAX_WAIT)
        self.event.clear()

    def dul_wait(self, dul: DULServiceProvider) -> None:
        peer = dul.socket.socket if dul.socket is not None else None
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return  # decrypted bytes already buffered: select would not see them
        self.dul_waiting = True
        try:
            if dul.to_provider_queue.queue or dul.event_queue.queue or dul._kill_thread:
                return  # queued between the loop's check and dul_waiting
            watched: list[Any] = [self._reader]
            if peer is not None and peer.fileno() >= 0:
                watched.append(peer)
            try:
                select.select(watched, [], [], MAX_WAIT)
            except (OSError, ValueError):  # the peer socket closed under us: the loop finds out
                _real_sleep(0.001)
                return
            try:
                while self._reader.recv(4096):
                    pass
            except OSError:  # drained (BlockingIOError) or closed
                pass
        finally:
            self.dul_waiting = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._reader.close()
            self._writer.close()


class _SignallingQueue(queue.Queue):
    """A queue that wakes its reader when something is put on it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _WakingCheckpoint(threading.Event):
    """The association reactor's pause checkpoint: a sending thread clears it and then
    waits for the reactor to reach it, so clearing wakes the reactor."""

    def __init__(self, wakeup: _Wakeup, is_set: bool) -> None:
        super().__init__()
        self._wakeup = wakeup
        if is_set:
            self.set()

    def clear(self) -> None:
        super().clear()
        self._wakeup.wake_reactor()


def _requeue_answers(assoc: Association) -> None:
    """An answer (a response) the reactor takes goes back on the DIMSE queue for the
    thread that sent the request; requests are served as before."""
    serve = assoc._serve_request
    answers = assoc.dimse.msg_queue

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg.is_valid_response:
            queue.Queue.put(answers, (context_id, msg))  # not the signalling put: the sender is woken
        else:
            serve(msg, context_id)

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]


def _waking_flag(name: str, wakeup_of: Callable[[Any], _Wakeup | None]) -> property:
    """A boolean attribute that wakes the reactors when it is set to True (a stop flag)."""
    key = f"_prompt_{name}"

    def get(self: Any) -> bool:
        return bool(self.__dict__.get(key, False))

    def set_(self: Any, value: bool) -> None:
        self.__dict__[key] = value
        wakeup = wakeup_of(self) if value else None
        if wakeup is not None:
            wakeup.wake_all()

    return property(get, set_)


def _wakeup_of_association(assoc: Any) -> _Wakeup | None:
    return assoc.__dict__.get("_prompt_wakeup")


def _wakeup_of_dul(dul: Any) -> _Wakeup | None:
    assoc = dul.__dict__.get("_assoc")
    return None if assoc is None else _wakeup_of_association(assoc)


class _Clock:
    """Stands in for the ``time`` module inside pynetdicom's association and DUL modules:
    the reactor loops' sleeps wait for their events, anything else is ``time`` itself."""

    def __init__(self, association_loop: CodeType, dul_loop: CodeType) -> None:
        self._association_loop = association_loop
        self._dul_loop = dul_loop

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        if frame.f_code is self._association_loop:
            assoc = frame.f_locals["self"]
            wakeup = _wakeup_of_association(assoc)
            if wakeup is not None:
                wakeup.reactor_wait()
                return
        elif frame.f_code is self._dul_loop:
            dul = frame.f_locals["self"]
            wakeup = _wakeup_of_dul(dul)
            if wakeup is not None:
                wakeup.dul_wait(dul)
                return
        _real_sleep(seconds)


def _sleeps(code: CodeType) -> bool:
    return "time" in code.co_names and "sleep" in code.co_names


def install() -> bool:
    """Make every association created from now on in this process wake on its events
    (idempotent), and give back the answers its reactor takes. False, with a warning, when
    pynetdicom's loops are not the ones this module knows: they then poll as before (the
    answers still go back to their senders)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        association_loop = Association._run_reactor.__code__
        dul_loop = DULServiceProvider.run_reactor.__code__
        prompt = _sleeps(association_loop) and _sleeps(dul_loop)
        original_init = Association.__init__
        original_dul_run = DULServiceProvider.run_reactor

        def init(self: Association, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            if prompt:
                wakeup = _Wakeup()
                # the queues and the checkpoint are fresh and empty: no thread uses them yet
                self.dul.to_provider_queue = _SignallingQueue(wakeup.wake_dul)
                self.dul.event_queue = _SignallingQueue(wakeup.wake_dul)
                self.dul.to_user_queue = _SignallingQueue(wakeup.wake_reactor)
                self.dimse.msg_queue = _SignallingQueue(wakeup.wake_reactor)
                self._reactor_checkpoint = _WakingCheckpoint(wakeup, self._reactor_checkpoint.is_set())
                self.__dict__["_prompt_wakeup"] = wakeup
            _requeue_answers(self)

        Association.__init__ = init  # type: ignore[method-assign]
        if not prompt:
            log.warning("pynetdicom's reactor loops changed; their 1 ms polling is left as it is")
            _installed = False
            return False

        def dul_run(self: DULServiceProvider) -> None:
            try:
                original_dul_run(self)
            finally:
                wakeup = _wakeup_of_dul(self)
                if wakeup is not None:
                    wakeup.close()

        DULServiceProvider.run_reactor = dul_run  # type: ignore[method-assign]
        Association._kill = _waking_flag("kill", _wakeup_of_association)  # type: ignore[assignment]
        DULServiceProvider._kill_thread = _waking_flag("kill_thread", _wakeup_of_dul)  # type: ignore[assignment]
        clock = _Clock(association_loop, dul_loop)
        association_module.time = clock  # type: ignore[assignment]
        dul_module.time = clock  # type: ignore[assignment]
        _installed = True
        return True
