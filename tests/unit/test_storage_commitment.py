"""Storage Commitment: when an instance counts as committed, failed, or still waited for."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config
from gateway.pseudonym import Pseudonymizer
from gateway.spool import Incoming, Spool
from gateway.status_codes import CLASS_INSTANCE_CONFLICT, NO_SUCH_INSTANCE, PROCESSING_FAILURE
from gateway.storage_commitment import (
    Request,
    StorageCommitment,
    event_information,
    outcome,
)

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def config(**commitment: float) -> Config:
    return Config.model_validate({
        "senders": [{"ae_title": "CT1"}, {"ae_title": "MR1"}], "keyring": "k.json", "spool": {"path": "s"},
        "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "routes": [{"name": "mr", "match": {"modality": ["MR"]}, "commitment": "orthanc"}, {"name": "rest"}],
        "storage_commitment": {"missing_after_seconds": 30, "timeout_seconds": 600, **commitment}})


def row(state: str, calling: str, modality: str, sop_class: str) -> tuple[str, Incoming]:
    return state, Incoming(1, Path("x.dcm"), calling, "t", modality, sop_class)


def by_header_free_rules(cfg: Config):  # type: ignore[no-untyped-def]
    return lambda item: cfg.route_for(item.calling_ae, item.modality, item.sop_class_uid)


def settle(req: Request, rows: dict[str, tuple[str, Incoming]], tokens: list[str], now: float):  # type: ignore[no-untyped-def]
    cfg = config()
    return outcome(req, rows, tokens, cfg, now, by_header_free_rules(cfg))


def request(*refs: tuple[str, str]) -> Request:
    return Request("1.2.3", "CT1", "127.0.0.1", list(refs), received_at=1000.0)


def test_intake_commits_what_is_in_the_spool_whatever_its_state() -> None:
    req = request((CT, "1.1"), (CT, "1.2"))
    rows = {"t1": row("received", "CT1", "CT", CT), "t2": row("quarantined", "CT1", "CT", CT)}
    assert settle(req, rows, ["t1", "t2"], 1001) == ([(CT, "1.1"), (CT, "1.2")], [])


def test_orthanc_commitment_waits_for_the_forward_and_fails_what_never_gets_there() -> None:
    req = request((MR, "2.1"), (MR, "2.2"))
    waiting = {"a": row("protected", "MR1", "MR", MR), "b": row("forwarded", "MR1", "MR", MR)}
    assert settle(req, waiting, ["a", "b"], 1001) is None
    assert settle(req, waiting, ["a", "b"], 1000 + 601) == ([(MR, "2.2")], [(MR, "2.1", PROCESSING_FAILURE)])
    quarantined = {"a": row("quarantined", "MR1", "MR", MR), "b": row("done", "MR1", "MR", MR)}
    assert settle(req, quarantined, ["a", "b"], 1001) == ([(MR, "2.2")], [(MR, "2.1", PROCESSING_FAILURE)])


def test_missing_instances_get_time_to_arrive_then_fail() -> None:
    req = request((CT, "1.1"), (CT, "9.9"))
    rows = {"t1": row("received", "CT1", "CT", CT)}
    assert settle(req, rows, ["t1", "none"], 1010) is None
    assert settle(req, rows, ["t1", "none"], 1031) == ([(CT, "1.1")], [(CT, "9.9", NO_SUCH_INSTANCE)])


def test_a_request_naming_the_wrong_class_fails_that_instance() -> None:
    req = request((MR, "1.1"))
    assert settle(req, {"t": row("received", "CT1", "CT", CT)}, ["t"], 1001) == (
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
