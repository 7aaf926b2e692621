"""The cluster mode with real parts: PostgreSQL, two Orthanc servers on its index (the
orthanc-postgresql plugin, one storage folder), gateway processes as nodes."""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
import requests

from testkit import held_plugin, synthetic
from testkit.localstack import (
    POSTGRESQL_INDEX_PLUGIN,
    REPO,
    GatewayProcess,
    OrthancServer,
    free_port,
    run_cli,
    storescu,
    wait_port,
)
from testkit.postgres import PostgresServer
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import _assert_exact, findscu, movescu

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


# -- gateway nodes on one state database, one spool folder, one keyring -------------------

_DATABASES = (f"state_{n}" for n in itertools.count(1))

StartNodes = Callable[..., tuple[GatewayProcess, GatewayProcess]]


@pytest.fixture
def start_nodes(tmp_path: Path, postgres: PostgresServer,
                orthancs: list[OrthancServer]) -> Iterator[StartNodes]:
    """Node A on Orthanc A and node B on Orthanc B (each the other's failover), a fresh state
    database, ``gateway db upgrade`` once, then both nodes serving."""
    started: list[GatewayProcess] = []

    def start(**settings: Any) -> tuple[GatewayProcess, GatewayProcess]:
        url = postgres.create_database(next(_DATABASES))
        lease = settings.pop("lease_seconds", 30)
        settle_b = settings.pop("settle_b", None)  # node B waits longer: node A takes the series
        nodes = [GatewayProcess(tmp_path / f"node-{name}", primary, failover=[other], port=free_port(),
                                state_url=url, node=f"node-{name}", shared_keyring=tmp_path / "keyring.json",
                                shared_spool=tmp_path / "spool", **settings)
                 for name, primary, other in (("a", *orthancs), ("b", *reversed(orthancs)))]
        for node in nodes:
            node.extra = {**node.extra, "state": {"url": url, "node": node.node, "lease_seconds": lease}}
        if settle_b is not None:
            nodes[1].settle_seconds = settle_b
        nodes[0].write_config()  # the keyring both share, and the schema
        run_cli("db", "upgrade", "--config", str(nodes[0].config_path))
        started.extend(nodes)
        with ThreadPoolExecutor(2) as pool:  # the two start at once (each takes seconds to import)
            list(pool.map(GatewayProcess.start, nodes))
        return nodes[0], nodes[1]

    yield start
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(GatewayProcess.stop, started))


def _acknowledged(port: int, files: list[Path]) -> int:
    """Send ``files`` to ``port``; how many the node answered Success."""
    return storescu(port, files).stderr.count("Received Store Response (Success)")


def _protected_lines(*nodes: GatewayProcess) -> list[str]:
    return [line for node in nodes for line in node.log_path.read_text().splitlines()
            if re.search(r"series \S+: \d+ objects protected by route", line)]


def _series_of(orthanc: OrthancServer, instances: set[str]) -> set[str]:
    return {orthanc.get(f"instances/{i}")["ParentSeries"] for i in instances}


def test_a_series_received_half_by_each_node_is_protected_once_and_arrives_whole(
        tmp_path: Path, orthancs: list[OrthancServer], start_nodes: StartNodes) -> None:
    a, b = start_nodes(settle_seconds=2)
    before = _instances(orthancs[0])
    files = _study(tmp_path / "study", (4,))
    assert _acknowledged(a.port, files[:2]) + _acknowledged(b.port, files[2:]) == 4
    wait_for(lambda: len(_instances(orthancs[1]) - before) >= 4)
    time.sleep(2)  # a second protection would land by now
    new = _instances(orthancs[0]) - before
    assert len(new) == 4 and len(set(_sop_uids(orthancs[0], new))) == 4
    assert len(_series_of(orthancs[0], new)) == 1  # one series, as the modality sent it
    (protected,) = _protected_lines(a, b)  # by one node, once, all four objects
    assert ": 4 objects protected by route" in protected


def _lease_holder(postgres: PostgresServer, url: str) -> str | None:
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as conn:
        row = conn.execute("SELECT lease_owner FROM series WHERE lease_owner IS NOT NULL"
                           " AND lease_expires > extract(epoch from now())").fetchone()
    return str(row[0]) if row else None


def test_node_a_killed_mid_protect_loses_its_lease_and_node_b_finishes_exactly_once(
        tmp_path: Path, postgres: PostgresServer, orthancs: list[OrthancServer], start_nodes: StartNodes) -> None:
    hold, started = tmp_path / "hold", tmp_path / "started"
    hold.touch()
    plugin_path = held_plugin.install(tmp_path / "plugins")
    route = {"name": "default", "plugin": "held",
             "plugin_settings": {"hold_file": str(hold), "started_file": str(started)}}
    # B's longer settle time leaves the series to A; the held plugin keeps A inside protect
    a, b = start_nodes(settle_seconds=1, settle_b=5, lease_seconds=3, routes=[route],
                       env={"PYTHONPATH": str(plugin_path)})
    url = a.state_url
    assert url is not None
    before = _instances(orthancs[0])
    files = _study(tmp_path / "study", (4,))
    assert _acknowledged(a.port, files[:2]) + _acknowledged(b.port, files[2:]) == 4
    wait_for(started.exists)  # A is inside the plugin, holding the series' lease
    assert wait_for(lambda: _lease_holder(postgres, url)) == "node-a"
    a.kill9()
    hold.unlink()  # B's own protect may pass
    wait_for(lambda: len(_instances(orthancs[0]) - before) >= 4, timeout=90)
    time.sleep(2)
    new = _instances(orthancs[0]) - before
    assert len(new) == 4 and len(set(_sop_uids(orthancs[0], new))) == 4  # each acknowledged object once
    assert _protected_lines(a) == []
    (protected,) = _protected_lines(b)
    assert ": 4 objects protected by route default" in protected
    assert _lease_holder(postgres, url) is None


def test_find_and_move_through_node_b_return_originals_that_entered_through_node_a(
        tmp_path: Path, orthancs: list[OrthancServer], start_nodes: StartNodes) -> None:
    mover = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": mover,
                                   "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
    a, b = start_nodes(settle_seconds=1, extra={"retrieval": retrieval})
    before = _instances(orthancs[0])
    files = _study(tmp_path / "study", (2, 1))
    assert _acknowledged(a.port, files) == 3
    wait_for(lambda: len(_instances(orthancs[0]) - before) == 3)
    original = pydicom.dcmread(files[0])
    found = findscu(b, tmp_path / "find", "WS_RESTORE", "QueryRetrieveLevel=STUDY",
                    f"AccessionNumber={original.AccessionNumber}", "PatientID", "PatientName", "StudyInstanceUID")
    assert len(found) == 1
    assert (found[0].PatientID, found[0].PatientName, found[0].StudyInstanceUID) == \
        (original.PatientID, original.PatientName, original.StudyInstanceUID)
    output = movescu(b, tmp_path / "moved", "WS_RESTORE", mover, "WS_RESTORE", str(original.StudyInstanceUID))
    assert len(list((tmp_path / "moved").iterdir())) == 3, output[-2000:]
    _assert_exact(tmp_path / "moved", {str(pydicom.dcmread(p).SOPInstanceUID): p for p in files})


def _haproxy_config(folder: Path, port: int, health: int, nodes: list[GatewayProcess]) -> Path:
    """The shipped ``deploy/haproxy.cfg`` on loopback: its frontend on ``port``, its servers
    the given nodes (DICOM port, health check on their status port), checks every 0.3 s."""
    text = (REPO / "deploy" / "haproxy.cfg").read_text()
    text = re.sub(r"^resolvers compose\n(    .*\n)+", "", text, flags=re.M)
    text = text.replace(" resolvers compose init-addr last,libc,none", "").replace("inter 5s", "inter 300ms")
    text = text.replace("bind :11112", f"bind 127.0.0.1:{port}").replace("bind :8405", f"bind 127.0.0.1:{health}")
    servers = "".join(f"    server gateway-{i} 127.0.0.1:{n.port} check port {n.status_port}\n"
                      for i, n in enumerate(nodes, start=1))
    text = re.sub(r"(    server gateway-\d \S+\n)+", servers, text)
    text = text.replace("log stdout format raw local0", f"log stdout format raw local0\n    pidfile {folder}/pid")
    path = folder / "haproxy.cfg"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_with_the_shipped_settings_takes_a_stopped_node_out(
        tmp_path: Path, orthancs: list[OrthancServer], start_nodes: StartNodes) -> None:
    a, b = start_nodes(settle_seconds=1)
    port, health = free_port(), free_port()
    config = _haproxy_config(tmp_path, port, health, [a, b])
    log = open(tmp_path / "haproxy.log", "wb")
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        healthz = f"http://127.0.0.1:{health}/healthz"
        wait_for(lambda: requests.get(healthz, timeout=2).status_code == 200)
        before = _instances(orthancs[0])
        first = _study(tmp_path / "first", (2,))
        assert _acknowledged(port, first) == 2
        a.stop()
        wait_for(lambda: "gateway-1" in (tmp_path / "haproxy.log").read_text(errors="replace")
                 and " is DOWN" in (tmp_path / "haproxy.log").read_text(errors="replace"), timeout=20)
        second = _study(tmp_path / "second", (3,))
        assert sum(_acknowledged(port, [f]) for f in second) == 3  # three associations, all taken
        text = (tmp_path / "haproxy.log").read_text(errors="replace")
        after = text[text.index("gateway-1 is DOWN"):]
        routed = re.findall(r"dicom gateway_nodes/(gateway-\d)", after)
        assert routed == ["gateway-2"] * 3  # none to the stopped node
        wait_for(lambda: len(_instances(orthancs[0]) - before) == 5)
        assert requests.get(healthz, timeout=2).status_code == 200  # one node up is enough
        b.stop()
        wait_for(lambda: requests.get(healthz, timeout=2).status_code == 503, timeout=20)
    finally:
        proxy.terminate()
        proxy.wait(10)
        log.close()
