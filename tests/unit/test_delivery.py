"""Further destinations: a copy is delivered once, waits while its destination is down,
and a refusal is final and visible; staged copies of a failed series never leave."""

from __future__ import annotations

import time
from pathlib import Path

from gateway import authenticity
from gateway.config import Config
from gateway.delivery import Deliverer
from gateway.forwarder import Refused, Unreachable
from gateway.keyring import Keyring
from gateway.spool import Spool


def config() -> Config:
    return Config.model_validate({
        "senders": [{"ae_title": "CT1"}], "keyring": "k.json", "spool": {"path": "s"},
        "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "destinations": {"ai": {"kind": "dicom", "ae_title": "AI", "host": "127.0.0.1", "port": 104},
                         "pacs2": {"kind": "dicom", "ae_title": "PACS2", "host": "127.0.0.1", "port": 105}},
        "routes": [{"name": "all", "destinations": [{"destination": "ai"}, {"destination": "pacs2"}]}],
        "scheduler": {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.01}})


class FakeNode:
    """Answers from a script: 'down', 'refuse' or 'ok', one per send."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.received: list[bytes] = []

    def send(self, data: bytes) -> str:
        answer = self.answers.pop(0)
        if answer == "down":
            raise Unreachable("node down")
        if answer == "refuse":
            raise Refused("node refused the object (status 0xA700)")
        self.received.append(data)
        return "ok"


def _copy(text: bytes) -> bytes:
    """A staged copy as protect makes it: the authenticity placeholder still in it."""
    return text + b" " + authenticity.PLACEHOLDER.encode()


def test_down_then_up_delivers_once_and_a_refusal_stays_for_an_admin(tmp_path: Path, keyring: Keyring) -> None:
    spool = Spool(tmp_path / "spool")
    staged = [spool.add_delivery(1, "ai", "2.25.1", _copy(b"copy-1")),
              spool.add_delivery(2, "ai", "2.25.1", _copy(b"copy-2")),
              spool.add_delivery(1, "pacs2", "2.25.1", _copy(b"other"))]
    deliverer = Deliverer(config(), spool, keyring)
    assert spool.due_deliveries() == []  # staged: the series is not protected yet
    spool.release_deliveries(staged)
    ai, pacs2 = FakeNode("down", "ok", "ok"), FakeNode("refuse")
    deliverer._senders = {("ai", config().destinations["ai"]): ai, ("pacs2", config().destinations["pacs2"]): pacs2}

    deliverer.deliver_due()  # ai is down: both of its copies wait; pacs2 refuses for good
    assert ai.received == [] and spool.delivery_counts() == {("ai", "due"): 2, ("pacs2", "failed"): 1}
    time.sleep(0.05)
    deliverer.deliver_due()
    assert [r[:6] for r in ai.received] == [b"copy-1", b"copy-2"]
    assert all(authenticity.verify(r, r[7:].decode(), keyring.authenticity) for r in ai.received)  # tagged
    assert spool.delivery_counts() == {("ai", "delivered"): 2, ("pacs2", "failed"): 1}
    assert not (spool.outbox / f"d{staged[0]}.dcm").exists()  # delivered copies leave the outbox
    assert (spool.outbox / f"d{staged[2]}.dcm").exists()  # the refused one stays for an admin
    deliverer.deliver_due()
    assert len(ai.received) == 2  # never twice
    spool.close()


def test_a_series_that_fails_leaves_no_copy_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    staged = [spool.add_delivery(1, "ai", "2.25.1", b"copy")]
    spool.discard_deliveries(staged)
    assert spool.delivery_counts() == {} and list(spool.outbox.glob("d*.dcm")) == []
    spool.close()
