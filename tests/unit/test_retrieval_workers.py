"""Retrieval's sending machinery with real parts: verified bytes sent as they are over a
real pynetdicom association, and batches prepared in real worker processes that fetch
over HTTP from a stand-in for Orthanc's ``/instances/{id}/file``."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import shared_memory
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]  # pynetdicom builds these at import

from gateway.config import Orthanc
from gateway.index import Entry
from gateway.keyring import Keyring
from gateway.pacs_reader import PacsReader
from gateway.protect import protect_series
from gateway.retrieval import sending
from gateway.retrieval.encoded import Verbatim, split
from gateway.retrieval.planner import Planned
from gateway.retrieval.sending import Prepared, Ready, Refused, fitted
from gateway.retrieval.vocabulary import Policy
from gateway.retrieval.workers import Workers, _received, _Shipped
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from testkit import synthetic
from testkit.localstack import free_port
from tests.conftest import encode


def _original(**attributes: object) -> Dataset:
    ds = synthetic.ct_series(1, size=32)[0]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _with_group_length(ds: Dataset) -> bytes:
    """``ds`` encoded with a retired (0008,0000) group length, which pydicom drops when it
    encodes a dataset: only bytes sent as they are keep it."""
    data = encode(ds)
    layout = split(data)
    assert layout is not None
    element = b"\x08\x00\x00\x00UL\x04\x00" + (0).to_bytes(4, "little")
    return data[:layout.offset] + element + data[layout.offset:]


def _encoded_in(ds: Dataset, syntax: str) -> bytes:
    copy = Dataset(ds)
    copy.file_meta = Dataset(ds.file_meta)  # type: ignore[assignment]
    copy.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    copy.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """A pynetdicom storage SCP that keeps each data set's transfer syntax and bytes as received."""
    received: list[tuple[str, bytes]] = []

    def on_store(event: evt.Event) -> int:
        received.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title="RECEIVER")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, received
    server.shutdown()


def _send(port: int, ds: Dataset, syntax: str) -> int:
    ae = AE(ae_title="GATEWAY")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="RECEIVER")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def test_verified_bytes_are_sent_as_they_are(receiver: tuple[int, list[tuple[str, bytes]]]) -> None:
    port, received = receiver
    data = _with_group_length(_original())
    layout = split(data)
    assert layout is not None and layout.syntax == ExplicitVRLittleEndian
    assert _send(port, Verbatim(data, layout), ExplicitVRLittleEndian) == 0x0000
    assert received == [(ExplicitVRLittleEndian, data[layout.offset:])]  # the group length survived


def test_a_receiver_that_takes_another_encoding_gets_the_object_converted(
        receiver: tuple[int, list[tuple[str, bytes]]]) -> None:
    port, received = receiver
    data = _with_group_length(_original())
    layout = split(data)
    assert layout is not None
    assert _send(port, Verbatim(data, layout), ImplicitVRLittleEndian) == 0x0000
    [(syntax, body)] = received
    assert syntax == ImplicitVRLittleEndian
    got = decode(io.BytesIO(body), is_implicit_vr=True, is_little_endian=True)
    want = pydicom.dcmread(io.BytesIO(data))
    assert got.SOPInstanceUID == want.SOPInstanceUID and got.PixelData == want.PixelData
    assert got.PatientName == want.PatientName


def test_files_that_cannot_be_sent_as_they_are_are_recognised() -> None:
    ds = _original()
    data = encode(ds)
    layout = split(data)
    assert layout is not None
    assert (layout.sop_class, layout.sop_uid) == (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert split(data[layout.offset:]) is None  # no file meta
    assert split(data[:200]) is None  # truncated
    assert split(_encoded_in(ds, ExplicitVRBigEndian)) is None  # big endian goes the parsed way
    implicit = _encoded_in(ds, ImplicitVRLittleEndian)
    implicit_layout = split(implicit)
    assert implicit_layout is not None and implicit_layout.syntax == ImplicitVRLittleEndian
    lying = data[:layout.offset] + implicit[implicit_layout.offset:]  # meta: explicit VR; data set: implicit
    assert split(bytes(lying)) is None


def test_a_restored_object_goes_in_its_own_syntax_or_decoded_or_not_at_all() -> None:
    data = encode(_original())
    ready = Ready(data, ExplicitVRLittleEndian, CTImageStorage, split(data))
    assert isinstance(fitted(ready, {CTImageStorage: frozenset({ExplicitVRLittleEndian})}), Verbatim)
    decoded = fitted(ready, {CTImageStorage: frozenset({ImplicitVRLittleEndian})})
    assert isinstance(decoded, Dataset) and decoded.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert isinstance(fitted(ready, {}), Refused)


# -- worker processes ------------------------------------------------------------------------


class _Orthanc(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        instance = self.path.removeprefix("/instances/").removesuffix("/file")
        body = self.files.get(instance)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Orthanc)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Orthanc(url=f"http://127.0.0.1:{server.server_port}", username="gateway", password="secret")
    server.shutdown()
    _Orthanc.files = {}


def _stored(keyring: Keyring, n: int) -> tuple[list[bytes], list[Planned]]:
    """``n`` originals of one series, protected and held by the stand-in Orthanc."""
    originals = [encode(ds) for ds in synthetic.ct_series(n, size=32)]
    protected = protect_series(originals, RouteSpec(options=frozenset(), plugin="none"), keyring, MemoryDataKeys())
    planned = []
    for i, p in enumerate(protected):
        ds = pydicom.dcmread(io.BytesIO(p.data))
        _Orthanc.files[f"id{i}"] = p.data
        planned.append(Planned(f"id{i}", Entry(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                               str(ds.SOPInstanceUID), "P", f"id{i}", str(ds.SOPClassUID),
                                               ExplicitVRLittleEndian, ("none",), {}, "")))
    return originals, planned


def _sent(objects: Prepared) -> list[Dataset | Refused]:
    return list(objects.datasets({CTImageStorage: frozenset({ExplicitVRLittleEndian})}))


def test_worker_processes_restore_exactly_and_refuse_what_does_not_verify(
        orthanc: Orthanc, keyring: Keyring, caplog: pytest.LogCaptureFixture) -> None:
    originals, planned = _stored(keyring, 12)
    tampered = bytearray(_Orthanc.files["id3"])
    tampered[-5] ^= 0xFF  # a pixel changed in Orthanc: the restore cannot match the digest
    _Orthanc.files["id3"] = bytes(tampered)
    del _Orthanc.files["id7"]  # Orthanc lost one
    workers = Workers(orthanc, PacsReader(orthanc))
    try:
        workers.warm()
        assert workers._warm.wait(60), "the worker processes did not start"
        caplog.set_level(logging.ERROR)
        sent = _sent(Prepared(planned, Policy.RESTORE, workers, keyring))
        pids = {p.pid for p in workers._pool._processes.values()}  # type: ignore[union-attr]
    finally:
        workers.close()
    assert len(sent) == 12
    for i, (original, ds) in enumerate(zip(originals, sent, strict=True)):
        if i == 3:
            assert isinstance(ds, Refused) and "digest" in ds
        elif i == 7:
            assert isinstance(ds, Refused) and "not available from Orthanc" in ds
        else:
            assert isinstance(ds, Verbatim)
            layout = split(original)
            assert layout is not None and ds.encoded(False, True, False) == original[layout.offset:]
    # the worker's own log line came back to this process, by pseudonym, never a value
    assert any(r.process in pids and "digest mismatch" in r.getMessage() for r in caplog.records)
    assert workers._pool is None


def test_before_the_workers_start_a_thread_prepares_and_a_dead_worker_is_replaced(
        orthanc: Orthanc, keyring: Keyring) -> None:
    originals, planned = _stored(keyring, 3)
    exact = [o[split(o).offset:] for o in originals]  # type: ignore[union-attr]
    workers = Workers(orthanc, PacsReader(orthanc))
    try:
        cold = _sent(Prepared(planned, Policy.RESTORE, workers, keyring))  # the pool is only starting
        assert [ds.encoded(False, True, False) for ds in cold] == exact  # type: ignore[union-attr]
        assert workers._warm.wait(60)
        victim = next(iter(workers._pool._processes.values()))  # type: ignore[union-attr]
        victim.kill()
        victim.join()
        # a batch the dead pool took fails loudly; one submitted after it broke goes to a new pool
        for ds, want in zip(_sent(Prepared(planned, Policy.RESTORE, workers, keyring)), exact, strict=True):
            assert (isinstance(ds, Refused) and "restore worker failed" in ds) or ds.encoded(  # type: ignore[union-attr]
                False, True, False) == want
        again = _sent(Prepared(planned, Policy.RESTORE, workers, keyring))
        assert [ds.encoded(False, True, False) for ds in again] == exact  # type: ignore[union-attr]
    finally:
        workers.close()


def test_a_pseudonymized_workstation_gets_what_orthanc_holds_after_the_egress_gate(
        orthanc: Orthanc, keyring: Keyring, tmp_path: Path) -> None:
    _, planned = _stored(keyring, 2)
    workers = Workers(orthanc, PacsReader(orthanc))
    try:
        sent = _sent(Prepared(planned, Policy.PSEUDONYMIZED, workers, keyring))
        stranger = _sent(Prepared(planned, Policy.PSEUDONYMIZED, workers, Keyring.create(tmp_path / "other.json")))
    finally:
        workers.close()
    for ds, item in zip(sent, planned, strict=True):
        assert isinstance(ds, Verbatim) and ds.SOPInstanceUID == item.entry.sop_uid
        held = _Orthanc.files[item.orthanc_id]
        assert ds.encoded(False, True, False) == held[split(held).offset:]  # type: ignore[union-attr]
    assert all(isinstance(ds, Refused) and "envelope" in ds for ds in stranger)


def test_a_batch_comes_back_through_shared_memory_that_never_outlives_it() -> None:
    data = [encode(ds) for ds in synthetic.ct_series(3, size=32)]
    batch: list[Ready | Refused] = [Ready(data[0], ExplicitVRLittleEndian, CTImageStorage, split(data[0])),
                                    Refused("restore failed: digest"),
                                    Ready(data[2], ExplicitVRLittleEndian, CTImageStorage, None)]
    shipped = _Shipped.of(batch)
    assert shipped.block is not None
    assert shipped.unpacked() == batch
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=shipped.block)
    assert _Shipped.of([Refused("gone")]) == (None, [Refused("gone")])
    # a retrieval that no longer wants the batch (cancelled) still frees its block
    arriving: Future[_Shipped] = Future()
    received = _received(arriving)
    arriving.set_running_or_notify_cancel()  # a worker has it already
    assert received.cancel()
    late = _Shipped.of(batch)
    arriving.set_result(late)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=late.block)
    queued: Future[_Shipped] = Future()
    _received(queued).cancel()
    assert queued.cancelled()  # not yet taken by a worker: it never runs
    failed: Future[_Shipped] = Future()
    waiting = _received(failed)
    failed.set_running_or_notify_cancel()
    failed.set_exception(RuntimeError("worker died"))
    with pytest.raises(RuntimeError):
        waiting.result()


def test_objects_of_a_retrieval_cut_short_by_the_gateway_stopping_fail_and_are_counted(keyring: Keyring) -> None:
    class Stopped:
        def submit(self, batch: list[Planned], policy: Policy, keyring: Keyring) -> Future[list[Ready | Refused]]:
            future: Future[list[Ready | Refused]] = Future()
            future.cancel()  # what the workers' close does to batches not yet taken
            return future

    planned = [Planned(f"id{i}", Entry("2.25.1", "2.25.2", f"2.25.3.{i}", "P", f"id{i}", CTImageStorage,
                                       ExplicitVRLittleEndian, ("none",), {}, "")) for i in range(10)]
    sent = _sent(Prepared(planned, Policy.RESTORE, Stopped(), keyring))
    assert len(sent) == 10 and all(isinstance(ds, Refused) and "CancelledError" in ds for ds in sent)


def test_what_is_prepared_ahead_of_sending_is_bounded_by_its_bytes(keyring: Keyring,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparing runs ahead of a receiver that is slow to accept (up to ``AHEAD`` batches),
    but stops while what is prepared and not yet sent holds ``AHEAD_BYTES``, whatever the
    objects' size; sending takes them in plan order, each batch in turn."""
    data = encode(synthetic.ct_series(1, size=16)[0])
    monkeypatch.setattr(sending, "AHEAD_BYTES", 3 * 8 * len(data))  # three batches of 8 such objects
    submitted: list[int] = []

    class Instant:
        def submit(self, batch: list[Planned], policy: Policy, keyring: Keyring) -> Future[list[Ready | Refused]]:
            submitted.append(int(batch[0].orthanc_id))
            future: Future[list[Ready | Refused]] = Future()
            future.set_result([Ready(data, ExplicitVRLittleEndian, CTImageStorage, split(data))] * len(batch))
            return future

    planned = [Planned(str(i), Entry("2.25.1", "2.25.2", f"2.25.3.{i}", "P", str(i), CTImageStorage,
                                     ExplicitVRLittleEndian, ("none",), {}, "")) for i in range(80)]
    prepared = Prepared(planned, Policy.RESTORE, Instant(), keyring)
    assert submitted == [0, 8, 16]  # nothing sent yet: three batches held
    objects = prepared.datasets({CTImageStorage: frozenset({ExplicitVRLittleEndian})})
    for _ in range(8):
        next(objects)
    assert submitted == [0, 8, 16, 24]  # the first batch was handed over: room for one more
    assert len(list(objects)) == 72 and submitted == list(range(0, 80, 8))
