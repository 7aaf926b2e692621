"""Fixtures of the unit tests that protect in worker processes: one keyring and one pool of
two protect processes per test module (starting the processes takes a second or two)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.keyring import Keyring
from gateway.protect_pool import ProtectPool


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("ring") / "keyring.json")


@pytest.fixture(scope="module")
def pool(ring: Keyring) -> Iterator[ProtectPool]:
    started = ProtectPool(ring, processes=2)
    yield started
    started.close()
