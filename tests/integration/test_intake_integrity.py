"""Verify before Success: damaged objects and odd SOP classes fail alone, on a live association.

A pynetdicom sender streams each file's bytes exactly as made (damage included) to the
gateway in front of a real Orthanc; good objects on the same association must succeed.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as netconfig
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode as encode_dataset

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer
from tests.conftest import encode
from tests.integration.conftest import wait_for


def _damaged_variants(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(good files, damaged files) for one CT series and one JPEG 2000 object."""
    series = synthetic.ct_series(6, size=64)
    raw = [encode(ds) for ds in series]
    pixel_at = raw[2].index(b"\xe0\x7f\x10\x00OW")
    j2k = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    first_fragment = j2k.index(b"\xfe\xff\x00\xe0", j2k.index(b"\xfe\xff\x00\xe0", j2k.index(b"\xe0\x7f\x10\x00")) + 4)
    made = {
        "good-1": raw[0], "good-2": raw[1], "good-3": raw[5], "good-j2k": j2k,
        "pixel data 3000 bytes short": raw[2][:-3000],
        "pixel length claims 0xFFFFFFF0, 100 bytes sent": raw[3][:pixel_at + 8] + (0xFFFFFFF0).to_bytes(4, "little")
        + bytes(100),
        "fragments without delimiter": j2k[:-8],
        "fragment with a broken item tag": j2k[:first_fragment] + b"\xfe\xff\x01\xe0" + j2k[first_fragment + 4:],
    }
    tmp_path.mkdir()
    paths = {}
    for name, data in made.items():
        paths[name] = tmp_path / f"{len(paths)}.dcm"
        paths[name].write_bytes(data)
    good = {k: v for k, v in paths.items() if k.startswith("good")}
    return good, {k: v for k, v in paths.items() if not k.startswith("good")}


def _send_naming_class(assoc: Association, dataset: pydicom.Dataset, named_class: str) -> int:
    """A C-STORE on the CT context whose request names ``named_class`` (a broken modality)."""
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage)
    req = C_STORE()
    req.MessageID = 4242
    req.AffectedSOPClassUID = named_class
    req.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    req.Priority = 2
    syntax = context.transfer_syntax[0]
    req.DataSet = io.BytesIO(encode_dataset(dataset, syntax.is_implicit_VR, syntax.is_little_endian))
    # What Association.send_c_store does around its message, done by hand for a request
    # pynetdicom itself would never send.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return int(rsp.Status) if rsp is not None else -1


def test_damaged_objects_fail_alone_and_never_reach_orthanc(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=0.5).start()
    good, damaged = _damaged_variants(tmp_path / "files")
    ae = AE(ae_title="MODALITY")
    for path in [*good.values(), *damaged.values()]:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    netconfig.STORE_SEND_CHUNKED_DATASET = True  # the bytes exactly as made
    answers: dict[str, tuple[int, str]] = {}
    try:
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
        order = ["good-1", *damaged, "good-2", "good-j2k"]
        for name in order:
            rsp = assoc.send_c_store((good | damaged)[name])
            answers[name] = (int(rsp.Status), str(rsp.get("ErrorComment", "")))
        # One object whose data set is another SOP class than its request and context, one
        # whose request names a SOP class no storage service knows ("31"): each fails alone.
        odd = synthetic.ct_series(1, size=32)[0]
        odd.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage, sent as CT
        answers["data set of another SOP class"] = (_send_naming_class(assoc, odd, CTImageStorage), "")
        answers["request naming SOP class 31"] = (_send_naming_class(assoc, synthetic.ct_series(1, size=32)[0], "31"),
                                                 "")
        rsp = assoc.send_c_store(good["good-3"])  # the association is still there
        answers["good-3"] = (int(rsp.Status), "")
        assert assoc.is_established
        assoc.release()
    finally:
        netconfig.STORE_SEND_CHUNKED_DATASET = False
    try:
        print(f"\nC-STORE answers: {answers}")
        for name in good:
            assert answers[name][0] == 0x0000, (name, answers[name])
        for name in damaged:
            status, comment = answers[name]
            assert status == 0xC000 and comment.startswith("damaged: "), (name, answers[name])
        assert answers["pixel data 3000 bytes short"][1] == "damaged: pixel data length goes past what arrived"
        assert "delimiter" in answers["fragments without delimiter"][1]
        assert answers["data set of another SOP class"][0] == 0xA900
        assert answers["request naming SOP class 31"][0] == 0x0122
        wait_for(lambda: len(orthanc.get("instances")) == len(good))
        time.sleep(1.5)  # nothing else follows
        assert len(orthanc.get("instances")) == len(good)
        audit = (gateway.folder / "spool" / "audit.jsonl").read_text()
        assert audit.count('"action": "store", "outcome": "refused"') == len(damaged) + 2
        assert "AbortRQ" not in gateway.log_path.read_text() and "No supported service" not in gateway.log_path.read_text()
    finally:
        gateway.stop()


def test_damaged_objects_can_be_kept_for_quarantine(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=0.5, extra={"listener": {
        "ae_title": "GATEWAY", "host": "127.0.0.1", "port": orthanc.gateway_port, "damaged": "quarantine"}}).start()
    series = synthetic.ct_series(2, size=64)
    files = []
    for i, ds in enumerate(series):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(encode(ds)[:-3000] if i == 1 else encode(ds))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    netconfig.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
        statuses = [int(assoc.send_c_store(f).Status) for f in files]
        assoc.release()
    finally:
        netconfig.STORE_SEND_CHUNKED_DATASET = False
    try:
        assert statuses == [0, 0]  # the site keeps everything
        wait_for(lambda: "quarantined  2" in gateway.status())
        assert "damaged on intake: pixel data length goes past what arrived" in gateway.status()
        assert orthanc.get("instances") == []
    finally:
        gateway.stop()
