"""Real Orthanc (Debian package) and the gateway as a process, on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import PYDICOM_ROOT_UID

from testkit.localstack import GatewayProcess, OrthancServer, free_port, have_tools

pytestmark = pytest.mark.integration

if not have_tools():  # .ci/run installs both; a developer machine may not have them
    pytest.skip("Orthanc and dcmtk are not installed (apt-get install orthanc orthanc-python dcmtk)",
                allow_module_level=True)


# Identifying values the integration tests send (testkit.synthetic's fictional patients).
HANDLED_IDENTITY = ("DOE^JANE", "JANE", "PID-4711-0815", "19610412", "ACC20240517", "SAINT EXAMPLE", "GREGORY",
                    "CUDDY", "ELM STREET", "ROE^RICHARD", "RICHARD")
# The original UIDs: testkit.synthetic makes them under pydicom's root, which the gateway's
# own UIDs (2.25.) never use; its logs must hold none of them.
ORIGINAL_UID_ROOT = PYDICOM_ROOT_UID


@pytest.fixture(scope="session", autouse=True)
def no_identity_in_any_gateway_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the integration tests: everything every gateway logged or audited, searched
    for the identity it handled. A hit fails the session at teardown."""
    yield
    logs = [p for pattern in ("gateway.log", "audit.jsonl", "audit/*.jsonl")  # the last: cluster nodes' audit files
            for p in tmp_path_factory.getbasetemp().rglob(pattern)]
    # The audit log names studies on purpose (what was restored); the service log never.
    leaks = [(p.name, value) for p in logs
             for value in (*HANDLED_IDENTITY, *((ORIGINAL_UID_ROOT,) if p.name == "gateway.log" else ()))
             if value in p.read_text(errors="replace").upper()]
    assert not leaks, f"identity in the gateway's logs: {leaks[:5]}"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", gateway_port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(tmp_path: Path, orthanc: OrthancServer) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path / "gateway", orthanc).start()
    yield proc
    proc.stop()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is truthy; return its value or fail the test."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")
