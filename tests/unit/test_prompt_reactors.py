"""pynetdicom's reactors woken by their events (``gateway.prompt_reactors``): requests and
answers still flow both ways, idle associations no longer poll every millisecond, and an
association's wake-up sockets end with it."""

from __future__ import annotations

import os
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway import prompt_reactors
from testkit import synthetic
from testkit.localstack import free_port


@pytest.fixture
def scp():  # type: ignore[no-untyped-def]
    assert prompt_reactors.install()
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="SCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, stored
    finally:
        server.shutdown()


def _requestor() -> AE:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[float]:
    calls: list[float] = []
    original = getattr(prompt_reactors._Wakeup, name)

    def counted(self: prompt_reactors._Wakeup, *args: object) -> None:
        calls.append(time.monotonic())
        original(self, *args)

    monkeypatch.setattr(prompt_reactors._Wakeup, name, counted)
    return calls


def test_requests_and_answers_flow_both_ways(scp) -> None:  # type: ignore[no-untyped-def]
    port, stored = scp
    series = synthetic.ct_series(20, size=16)
    assoc = _requestor().associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    assert all(assoc.send_c_echo().Status == 0x0000 for _ in range(50))
    statuses = []
    for ds in series:  # the requestor pauses its own reactor for each send (the checkpoint)
        statuses.append(assoc.send_c_store(ds).Status)
    assoc.release()
    assert assoc.is_released and statuses == [0x0000] * len(series)
    assert stored == [str(ds.SOPInstanceUID) for ds in series]


def test_an_idle_association_waits_instead_of_polling(scp, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    port, _ = scp
    dul_turns = _counting(monkeypatch, "dul_wait")
    reactor_turns = _counting(monkeypatch, "reactor_wait")
    assoc = _requestor().associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.send_c_echo().Status == 0x0000
    dul_turns.clear()
    reactor_turns.clear()
    time.sleep(0.5)
    idle_dul, idle_reactor = len(dul_turns), len(reactor_turns)
    assoc.release()
    # pynetdicom's own loops turn every millisecond: about 500 each here, on both sides
    # (two associations); woken only by events or after MAX_WAIT, about 10 each.
    limit = 4 * 0.5 / prompt_reactors.MAX_WAIT
    assert 0 < idle_dul <= limit and 0 < idle_reactor <= limit, (idle_dul, idle_reactor)


def test_a_stop_wakes_the_reactors_at_once(scp) -> None:  # type: ignore[no-untyped-def]
    port, _ = scp
    assoc = _requestor().associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.send_c_echo().Status == 0x0000
    time.sleep(0.2)  # both reactors asleep
    started = time.monotonic()
    assoc.release()
    assoc.join(timeout=5)
    # release and the end of both reactors each wait for a wake-up, never for MAX_WAIT in turn
    assert not assoc.is_alive() and time.monotonic() - started < 10 * prompt_reactors.MAX_WAIT


def test_the_wake_up_sockets_end_with_their_association(scp) -> None:  # type: ignore[no-untyped-def]
    port, _ = scp

    def open_files() -> int:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    ae = _requestor()
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")  # the first one's lazily made resources
    assoc.release()
    time.sleep(0.2)
    before = open_files()
    for _ in range(10):
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assoc.join(timeout=5)
    deadline = time.monotonic() + 5
    while open_files() > before + 2 and time.monotonic() < deadline:  # the acceptors end a moment later
        time.sleep(0.05)
    assert open_files() <= before + 2  # not 4 sockets an association left behind


def test_install_is_idempotent_and_leaves_other_sleeps_alone() -> None:
    assert prompt_reactors.install() and prompt_reactors.install()
    from pynetdicom import association

    started = time.monotonic()
    association.time.sleep(0.02)  # not a reactor loop: a plain sleep
    assert time.monotonic() - started >= 0.02
    assert association.time.monotonic() > 0  # the rest of ``time`` as it is


def test_a_copy_of_the_listener_contexts_is_independent_of_the_original() -> None:
    from copy import deepcopy

    from pynetdicom.presentation import build_context

    from gateway.listener import TRANSFER_SYNTAXES, _Contexts

    contexts = _Contexts([build_context(CTImageStorage, list(TRANSFER_SYNTAXES))])
    (twin,) = deepcopy(contexts)
    twin.transfer_syntax = [ExplicitVRLittleEndian]
    twin.context_id = 3
    assert contexts[0].transfer_syntax == list(TRANSFER_SYNTAXES) and contexts[0].context_id is None
    assert twin.abstract_syntax == CTImageStorage


def test_whole_reads_return_what_pynetdicom_would_and_grow_only_with_what_arrives() -> None:
    import socket
    import threading

    from pynetdicom.transport import AssociationSocket

    from gateway import whole_reads

    class Holder:  # just what _recv uses of an AssociationSocket
        def __init__(self, sock: socket.socket) -> None:
            self.socket = sock

    def read(payload: bytes, want: int, piece: int = 4096) -> bytearray:
        ours, theirs = socket.socketpair()

        def send() -> None:
            for start in range(0, len(payload), piece):  # in small pieces, as a network delivers
                theirs.sendall(payload[start:start + piece])
            theirs.close()

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return whole_reads._recv(Holder(ours), want)  # type: ignore[arg-type]
        finally:
            sender.join()
            ours.close()

    data = bytes(range(256)) * 9000  # 2.3 MB: more than one piece
    assert read(data, len(data)) == data
    assert read(data[:1000], 5000) == data[:1000]  # the peer closed early: what arrived
    assert read(b"", 10) == bytearray()
    claimed = 4 * 2**30  # a header claiming 4 GB, then 1 KB and a close: no 4 GB buffer
    assert read(b"x" * 1024, claimed) == b"x" * 1024
    whole_reads.install()
    assert AssociationSocket.recv is whole_reads._recv


def test_an_answer_the_reactor_takes_goes_back_to_its_sender_and_requests_are_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from io import BytesIO

    from pydicom.uid import generate_uid
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE

    assert prompt_reactors.install()
    served: list[tuple[int, object]] = []
    monkeypatch.setattr(Association, "_serve_request", lambda self, msg, cid: served.append((cid, msg)))
    assoc = Association(AE(), "requestor")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = generate_uid()
    rsp.Status = 0x0000
    assoc._serve_request(rsp, 3)  # taken by the reactor with a stale "paused": back on the queue
    assert assoc.dimse.get_msg(block=False) == (3, rsp) and served == []
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = generate_uid()
    req.Priority = 2
    req.DataSet = BytesIO(b"\x00")
    assoc._serve_request(req, 5)
    assert served == [(5, req)] and assoc.dimse.get_msg(block=False) == (None, None)


def test_changed_loops_keep_their_polling_and_answers_still_go_back() -> None:
    import subprocess
    import sys

    code = ("import gateway.prompt_reactors as p; p._sleeps = lambda code: False\n"
            "from pynetdicom import AE; from pynetdicom.association import Association\n"
            "first, again = p.install(), p.install(); a = Association(AE(), 'requestor')\n"
            "print(first, again, '_prompt_wakeup' in a.__dict__, a._serve_request.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "False", "False", "serve_or_requeue"]
    assert "reactor loops changed" in result.stderr
