"""The cluster mode with real parts: PostgreSQL, two Orthanc servers on its index (the
orthanc-postgresql plugin, one storage folder), gateway processes as nodes."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import synthetic
from testkit.localstack import POSTGRESQL_INDEX_PLUGIN, GatewayProcess, OrthancServer, free_port, storescu
from testkit.postgres import PostgresServer
from tests.conftest import write_study
from tests.integration.conftest import wait_for

if not POSTGRESQL_INDEX_PLUGIN.exists():
    pytest.skip("Orthanc's PostgreSQL plugin is not installed (apt-get install orthanc-postgresql)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def orthancs(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[OrthancServer]]:
    """Two Orthanc servers on one PostgreSQL index and one storage folder, for the module."""
    folder = tmp_path_factory.mktemp("orthanc-cluster")
    postgres.create_database("orthanc_cluster")
    servers = [OrthancServer(folder / name, gateway_port=free_port(), postgres_port=postgres.port,
                             postgres_database="orthanc_cluster", storage=folder / "storage")
               for name in ("orthanc-a", "orthanc-b")]
    for server in servers:  # one after the other: the first one creates the schema
        server.start()
    yield servers
    for server in servers:
        server.stop()


_ACCESSIONS = (f"ACC-CLUSTER-{n}" for n in itertools.count(1))


def _study(folder: Path, series_sizes: tuple[int, ...]) -> list[Path]:
    """A small study of its own (the synthetic UIDs follow the accession number): the
    module's tests share one Orthanc cluster."""
    identity = dataclasses.replace(synthetic.Identity(), accession=next(_ACCESSIONS))
    return write_study(folder, series_sizes, size=32, identity=identity)


def _instances(orthanc: OrthancServer) -> set[str]:
    return set(orthanc.get("instances"))


def _sop_uids(orthanc: OrthancServer, instances: set[str]) -> list[str]:
    return [orthanc.get(f"instances/{i}/simplified-tags")["SOPInstanceUID"] for i in instances]


def test_the_two_orthanc_servers_share_one_index(orthancs: list[OrthancServer]) -> None:
    a, b = orthancs
    assert _instances(a) == _instances(b)
    assert a.get("system")["DatabaseBackendPlugin"] == b.get("system")["DatabaseBackendPlugin"] is not None


def test_an_orthanc_stopped_during_forwarding_the_other_takes_the_objects(
        tmp_path: Path, orthancs: list[OrthancServer]) -> None:
    a, b = orthancs
    before = _instances(b)
    gateway = GatewayProcess(tmp_path / "gateway", a, failover=[b], settle_seconds=3).start()
    try:
        _study(tmp_path / "first", (2,))
        storescu(gateway.port, tmp_path / "first")
        wait_for(lambda: "forwarded    2" in gateway.status())
        assert len(_instances(b) - before) == 2  # stored through A, listed by B: one index

        _study(tmp_path / "second", (3,))
        storescu(gateway.port, tmp_path / "second")  # acknowledged; settles in 3 s
        a.stop()  # A goes down before the series is forwarded
        wait_for(lambda: "forwarded    5" in gateway.status())
        new = _instances(b) - before
        assert len(new) == 5
        assert len(set(_sop_uids(b, new))) == 5  # each SOP instance once
        log = gateway.log_path.read_text()
        assert f"Orthanc {a.url} skipped (not reachable); trying {b.url}" in log
        assert f"Orthanc {b.url} in use" in log
    finally:
        gateway.stop()
        if a.process is None:
            a.start()  # the module's other tests use both
