"""Storage Commitment: when an instance counts as committed, failed, or still waited for."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config
from gateway.pseudonym import Pseudonymizer
from gateway.spool import Spool
from gateway.storage_commitment import (CLASS_INSTANCE_CONFLICT, NO_SUCH_INSTANCE, PROCESSING_FAILURE, Request,
                                        StorageCommitment, event_information, outcome)

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def config(**commitment: float) -> Config:
    return Config.model_validate({
        "senders": [{"ae_title": "CT1"}, {"ae_title": "MR1"}], "keyring": "k.json", "spool": {"path": "s"},
        "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "routes": [{"name": "mr", "match": {"modality": ["MR"]}, "commitment": "orthanc"}, {"name": "rest"}],
        "storage_commitment": {"missing_after_seconds": 30, "timeout_seconds": 600, **commitment}})


def request(*refs: tuple[str, str]) -> Request:
    return Request("1.2.3", "CT1", "127.0.0.1", list(refs), received_at=1000.0)


def test_intake_commits_what_is_in_the_spool_whatever_its_state() -> None:
    req = request((CT, "1.1"), (CT, "1.2"))
    rows = {"t1": ("received", "CT1", "CT", CT), "t2": ("quarantined", "CT1", "CT", CT)}
    assert outcome(req, rows, ["t1", "t2"], config(), 1001) == ([(CT, "1.1"), (CT, "1.2")], [])


def test_orthanc_commitment_waits_for_the_forward_and_fails_what_never_gets_there() -> None:
    req = request((MR, "2.1"), (MR, "2.2"))
    waiting = {"a": ("protected", "MR1", "MR", MR), "b": ("forwarded", "MR1", "MR", MR)}
    assert outcome(req, waiting, ["a", "b"], config(), 1001) is None
    assert outcome(req, waiting, ["a", "b"], config(), 1000 + 601) == ([(MR, "2.2")], [(MR, "2.1", PROCESSING_FAILURE)])
    quarantined = {"a": ("quarantined", "MR1", "MR", MR), "b": ("done", "MR1", "MR", MR)}
    assert outcome(req, quarantined, ["a", "b"], config(), 1001) == ([(MR, "2.2")], [(MR, "2.1", PROCESSING_FAILURE)])


def test_missing_instances_get_time_to_arrive_then_fail() -> None:
    req = request((CT, "1.1"), (CT, "9.9"))
    rows = {"t1": ("received", "CT1", "CT", CT)}
    assert outcome(req, rows, ["t1", "none"], config(), 1010) is None
    assert outcome(req, rows, ["t1", "none"], config(), 1031) == ([(CT, "1.1")], [(CT, "9.9", NO_SUCH_INSTANCE)])


def test_a_request_naming_the_wrong_class_fails_that_instance() -> None:
    req = request((MR, "1.1"))
    assert outcome(req, {"t": ("received", "CT1", "CT", CT)}, ["t"], config(), 1001) == (
        [], [(MR, "1.1", CLASS_INSTANCE_CONFLICT)])


def test_event_information_by_the_standard() -> None:
    kind, info = event_information("1.2.3", [(CT, "1.1")], [])
    assert kind == 1 and "FailedSOPSequence" not in info
    kind, info = event_information("1.2.3", [], [(CT, "1.2", NO_SUCH_INSTANCE)])
    assert kind == 2 and "ReferencedSOPSequence" not in info
    assert (info.TransactionUID, info.FailedSOPSequence[0].FailureReason) == ("1.2.3", 0x0112)


def test_pending_requests_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    pseudonyms = Pseudonymizer(b"k" * 32)
    first = StorageCommitment(config(), spool, pseudonyms)
    first._save(request((CT, "1.1")))  # what on_n_action writes before it answers
    again = StorageCommitment(config(), spool, pseudonyms)
    (resumed,) = again._pending.values()
    assert (resumed.transaction_uid, resumed.references, resumed.assoc) == ("1.2.3", [(CT, "1.1")], None)
    spool.close()


@pytest.mark.parametrize("bad", [{"ae_title": "CT1", "storage_commitment_port": 104}])
def test_a_result_port_needs_the_senders_host(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="storage_commitment_port needs the sender's host"):
        Config.model_validate({**config().model_dump(mode="json"), "senders": [bad]})
