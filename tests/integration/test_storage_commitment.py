"""Storage Commitment Push Model: a pynetdicom modality asks the gateway process to commit
what it sent, and gets the result as an N-EVENT-REPORT (same association, or a new one)."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.storage_commitment import WELL_KNOWN_INSTANCE
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _request(files: list[Path], extra: list[tuple[str, str]] = ()) -> tuple[Dataset, list[tuple[str, str]]]:  # type: ignore[assignment]
    refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in (pydicom.dcmread(f) for f in files)] + list(extra)
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
        info.ReferencedSOPSequence.append(item)
    return info, refs


class Reports:
    """What the modality's N-EVENT-REPORT handler received."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def __call__(self, event: evt.Event) -> tuple[int, None]:
        self.got.append((event.request.EventTypeID, event.event_information))
        self.arrived.set()
        return 0x0000, None


def _uids(info: Dataset, keyword: str) -> list[str]:
    return sorted(str(i.ReferencedSOPInstanceUID) for i in info.get(keyword, []))


def test_commitment_on_the_same_association_lists_the_instance_never_sent(tmp_path: Path,
                                                                           orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=60,  # intake: no need to forward
                             extra={"storage_commitment": {"missing_after_seconds": 1, "poll_seconds": 0.2}}).start()
    try:
        files = write_study(tmp_path / "study", (2,), size=32)
        storescu(gateway.port, tmp_path / "study")
        never_sent = (CT_IMAGE, generate_uid())
        info, refs = _request(files, [never_sent])

        reports = Reports()
        modality = AE(ae_title="MODALITY")
        modality.add_requested_context(StorageCommitmentPushModel)
        assoc = modality.associate("127.0.0.1", gateway.port, ae_title="GATEWAY",
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports)])
        assert assoc.is_established
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assert status.Status == 0x0000
        missing = Dataset()  # no Referenced SOP Sequence: refused, nothing reported for it
        missing.TransactionUID = generate_uid()
        status, _ = assoc.send_n_action(missing, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assert status.Status == 0x0120
        assert reports.arrived.wait(20), "no N-EVENT-REPORT on the open association"
        wait_for(lambda: "2 committed, 1 failed" in gateway.log_path.read_text(), timeout=10)
        assoc.release()
    finally:
        gateway.stop()
    ((event_type, result),) = reports.got
    assert event_type == 2  # failures exist
    assert result.TransactionUID == info.TransactionUID
    assert _uids(result, "ReferencedSOPSequence") == sorted(uid for _, uid in refs[:2])
    (failed,) = result.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (never_sent[1], 0x0112)


def test_commitment_to_orthanc_reported_on_a_new_association(tmp_path: Path, orthanc: OrthancServer) -> None:
    port = free_port()
    reports = Reports()
    modality = AE(ae_title="MODALITY")
    modality.add_supported_context(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    server = modality.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports)])
    gateway = GatewayProcess(
        tmp_path / "gateway", orthanc,
        senders=[{"ae_title": "MODALITY", "host": "127.0.0.1", "storage_commitment_port": port}],
        routes=[{"name": "default", "plugin": "none", "commitment": "orthanc"}],
        extra={"storage_commitment": {"missing_after_seconds": 5, "poll_seconds": 0.2}}).start()
    try:
        files = write_study(tmp_path / "study", (2,), size=32)
        storescu(gateway.port, tmp_path / "study")
        info, refs = _request(files)
        requester = AE(ae_title="MODALITY")
        requester.add_requested_context(StorageCommitmentPushModel)
        assoc = requester.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assert status.Status == 0x0000
        assoc.release()  # before the result: it must come on an association of its own
        assert reports.arrived.wait(60), "no N-EVENT-REPORT to the modality's port"
        stored_when_reported = len(orthanc.get("/instances"))
        wait_for(lambda: "2 committed, 0 failed" in gateway.log_path.read_text(), timeout=10)
    finally:
        gateway.stop()
        server.shutdown()
    ((event_type, result),) = reports.got
    assert event_type == 1 and "FailedSOPSequence" not in result
    assert _uids(result, "ReferencedSOPSequence") == sorted(uid for _, uid in refs)
    assert stored_when_reported == 2  # "orthanc" commitment: reported only once Orthanc holds them
    assert wait_for(lambda: not list((tmp_path / "gateway" / "spool" / "commitment").glob("*.json")), timeout=5)
