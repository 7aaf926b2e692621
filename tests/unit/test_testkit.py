"""The test harness's own promise that parallel workers never meet on a port."""

from __future__ import annotations

import pytest

from testkit import localstack


@pytest.mark.parametrize("worker", ["gw0", "gw1", "gw2"])
def test_each_xdist_worker_hands_out_only_its_own_ports(worker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setattr(localstack, "_HANDED_OUT", set())
    ports = [localstack.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert {(port >> 1) % 3 for port in ports} == {int(worker[2:])}


def test_without_workers_every_free_port_may_be_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert localstack._share() == (0, 1)
