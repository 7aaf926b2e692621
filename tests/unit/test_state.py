"""The state layer on both backends: SQLite (one node) and a real PostgreSQL (a cluster).

Every test runs on each backend that is there; on PostgreSQL each gets a fresh database.
The cluster tests put two nodes (two Spool objects, as two gateway processes would) on one
database and one shared folder and make them race.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text, update

from gateway import envelope
from gateway.audit import AuditLog
from gateway.cli import main
from gateway.config import Config
from gateway.index import Entry, Index, Sealing
from gateway.keyring import Keyring
from gateway.spool import LeaseLost, Spool
from gateway.state.commands import state_warning
from gateway.state.engine import State, StateError, open_state, postgres_engine, sqlite_engine
from gateway.state.migrate import current, head, upgrade
from gateway.state.schema import metadata, series
from gateway.worker import Worker
from testkit.postgres import PostgresServer

CT = "1.2.840.10008.5.1.4.1.1.2"
_names = itertools.count()

# A node factory: (node id, lease seconds) -> a migrated State on the test's database.
Nodes = Callable[..., State]


@pytest.fixture(params=["sqlite", "postgres"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    made: list[State] = []
    if request.param == "sqlite":
        def engine():  # type: ignore[no-untyped-def]
            return sqlite_engine(tmp_path / "spool" / "spool.sqlite3")
        (tmp_path / "spool").mkdir()
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"state_{next(_names)}_{int(time.time() * 1000) % 10**8}")

        def engine():  # type: ignore[no-untyped-def]
            return postgres_engine(url)

    def make(node: str = "a", lease_seconds: float = 30.0) -> State:
        state = State(engine(), node, lease_seconds)
        upgrade(state)
        made.append(state)
        return state

    yield make
    for state in made:
        state.close()


def _spool(tmp_path: Path, nodes: Nodes, node: str = "a", lease_seconds: float = 30.0, intake: bool = True) -> Spool:
    return Spool(tmp_path / "spool", intake=intake, state=nodes(node, lease_seconds))


def _accept(spool: Spool, series_token: str, n: int = 1, sop: str | None = None) -> list[int]:
    return [spool.accept(b"object", "CT1", series_token, sop or f"{series_token}.{i}", "CT", CT) for i in range(n)]


# -- the spool's life cycle, on both backends -------------------------------------------


def test_the_migrations_build_exactly_the_declared_tables(nodes: Nodes) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    state = nodes()
    assert current(state) == head()
    with state.read() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_an_object_goes_from_intake_to_forwarded(tmp_path: Path, nodes: Nodes) -> None:
    spool = _spool(tmp_path, nodes)
    ids = _accept(spool, "2.25.1", 3)
    assert spool.counts() == {"received": 3} and spool.room() > 0
    assert [t for t, _, _ in spool.receiving_series()] == ["2.25.1"]
    assert spool.claim_series(settle_seconds=60) is None  # not settled yet
    assert spool.claim_series(settle_seconds=0) == "2.25.1"
    assert [i.id for i in spool.received("2.25.1")] == ids
    for row_id in ids:
        spool.write_output(row_id, b"protected")
    spool.protected("2.25.1", "default", ids)
    due = spool.due()
    assert [o.id for o in due] == ids and all(o.out_path.read_bytes() == b"protected" for o in due)
    spool.retry_later(ids[0], 3600, "Orthanc down")
    spool.forwarded_many(ids[1:])
    assert spool.due() == []  # the first waits for its retry
    assert spool.counts() == {"protected": 1, "forwarded": 2}
    assert not (spool.outbox / f"{ids[1]}.dcm").exists()
    assert spool.problem_series() == [("2.25.1", "protected", "Orthanc down", pytest.approx(time.time(), abs=60))]
    assert spool.purge_originals(0) == 2 and spool.counts()["done"] == 2


def test_a_resend_supersedes_and_copies_of_one_instance_never_overtake(tmp_path: Path, nodes: Nodes) -> None:
    spool = _spool(tmp_path, nodes)
    first = _accept(spool, "2.25.2", sop="2.25.2.1")
    spool.protected("2.25.2", "default", first)
    second = _accept(spool, "2.25.2", sop="2.25.2.1") + _accept(spool, "2.25.2", sop="2.25.2.1")
    (latest,) = spool.received("2.25.2")
    assert latest.id == second[1] and spool.counts()["superseded"] == 1
    spool.protected("2.25.2", "default", [latest.id])
    assert [o.id for o in spool.due()] == first  # the correction waits for the first copy
    spool.forwarded_many(first)
    assert [o.id for o in spool.due()] == [latest.id]
    assert spool.latest(["2.25.2.1", "2.25.9"])["2.25.2.1"][0] == "protected"


def test_quarantine_release_and_delete(tmp_path: Path, nodes: Nodes) -> None:
    spool = _spool(tmp_path, nodes)
    ids = _accept(spool, "2.25.3", 2)
    spool.quarantine("2.25.3", "default", "gate: (0010,0010)", ids)
    (aside,) = spool.set_aside()
    assert (aside.series_token, aside.state, aside.objects) == ("2.25.3", "quarantined", 2)
    assert len(list((spool.quarantine_dir / "2.25.3").iterdir())) == 2
    summary, objects = spool.series_detail("2.25.3") or (None, [])
    assert summary == aside and [o["state"] for o in objects] == ["quarantined", "quarantined"]
    assert spool.release("2.25.3", "other") == 2 and spool.forced_route("2.25.3") == "other"
    assert all(i.path.exists() for i in spool.received("2.25.3"))
    spool.quarantine("2.25.3", "other", "again", ids)
    assert spool.delete_set_aside("2.25.3") == 2
    assert spool.counts() == {"purged": 2} and spool.action_counts() == {"reroute": 1, "delete": 1}


def test_deliveries_are_staged_released_and_claimed(tmp_path: Path, nodes: Nodes) -> None:
    spool = _spool(tmp_path, nodes)
    (row,) = _accept(spool, "2.25.4")
    staged = [spool.add_delivery(row, name, "2.25.4", b"copy") for name in ("research", "archive")]
    assert spool.due_deliveries() == []  # staged until the series is whole
    spool.release_deliveries(staged)
    other = Spool(tmp_path / "spool", intake=False, state=nodes("b"))
    assert [d[0] for d in spool.due_deliveries()] == staged and other.due_deliveries() == []
    spool.delivered(staged[0])
    spool.delivery_later(staged[1], 3600, "down")
    assert spool.delivery_counts() == {("research", "delivered"): 1, ("archive", "due"): 1}


def test_the_index_replaces_in_order_and_keeps_the_originals_sealed(tmp_path: Path, nodes: Nodes) -> None:
    ring = Keyring.create(tmp_path / "keyring.json")
    key = envelope.new_data_key()
    sealing = Sealing(*envelope.wrap(ring, key), key)
    state = nodes()
    index = Index(state)

    def entry(sop: str, orthanc_id: str) -> Entry:
        return Entry("1.9", "1.9.1", sop, "P", orthanc_id, CT, "", ("none",), {"PatientName": "DOE^JANE"}, "d")

    index.put_many([(entry("1.9.1.1", "a"), sealing), (entry("1.9.1.2", "b"), sealing),
                    (entry("1.9.1.1", "c"), sealing)])
    found = index.get("1.9.1.1", ring)
    assert found is not None and found.orthanc_id == "c" and found.original == {"PatientName": "DOE^JANE"}
    assert index.count() == 2 and [e.sop_uid for e in index.entries(ring)] == ["1.9.1.1", "1.9.1.2"]
    with state.read() as conn:
        raw = b"".join(bytes(r[0]) for r in conn.execute(text("SELECT sealed FROM retrieval_index")))
    assert b"DOE^JANE" not in raw
    assert index.get("1.9.1.1", Keyring.create(tmp_path / "other.json")) is None  # another keyring opens nothing


def test_the_audit_table_holds_every_nodes_lines(tmp_path: Path, nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    AuditLog(tmp_path / "a.jsonl", state=a).record("WS1", "10.0.0.1", "find", "success", study="2.25.7")
    AuditLog(tmp_path / "b.jsonl", state=b).record("WS2", "10.0.0.2", "move", "refused")
    assert [(line["ae_title"], line["action"]) for line in AuditLog(tmp_path / "x.jsonl", state=a).lines()] == [
        ("WS1", "find"), ("WS2", "move")]
    assert "WS2" not in (tmp_path / "a.jsonl").read_text()  # each node's file holds its own lines


# -- two nodes on one database and one folder --------------------------------------------


def test_two_nodes_racing_for_settled_series_take_each_exactly_once(tmp_path: Path, nodes: Nodes) -> None:
    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    for n in range(12):
        _accept(a if n % 2 else b, f"2.25.{100 + n}")
    start = threading.Barrier(2)

    def drain(spool: Spool) -> list[str]:
        start.wait()
        taken = []
        while (token := spool.claim_series(0, taken)) is not None:
            taken.append(token)
        return taken

    with ThreadPoolExecutor(2) as pool:
        got_a, got_b = pool.map(drain, (a, b))
    assert sorted(got_a + got_b) == sorted(f"2.25.{100 + n}" for n in range(12))
    assert not set(got_a) & set(got_b)


def test_one_series_claimed_at_once_by_two_nodes_has_one_winner(tmp_path: Path, nodes: Nodes) -> None:
    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    start = threading.Barrier(2)

    def claim(spool: Spool) -> str | None:
        start.wait()
        return spool.claim_series(0)

    for round_ in range(5):
        ids = _accept(a, f"2.25.5{round_}")
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(claim, (a, b)))
        assert sorted(results, key=str) == [f"2.25.5{round_}", None]
        (winner,) = [s for s, r in zip((a, b), results) if r]
        winner.protected(f"2.25.5{round_}", "default", ids)


def test_a_dead_nodes_lease_expires_and_another_node_finishes(tmp_path: Path, nodes: Nodes) -> None:
    a, b = _spool(tmp_path, nodes, "a", lease_seconds=30), _spool(tmp_path, nodes, "b", lease_seconds=30)
    ids = _accept(a, "2.25.6", 2)
    assert a.claim_series(0) == "2.25.6"
    assert b.claim_series(0) is None  # held by a
    before = _expiry(a, "2.25.6")
    time.sleep(0.01)
    a.renew_leases()  # the heartbeat pushes it back
    assert _expiry(a, "2.25.6") > before
    with a.state.write() as conn:  # a is killed: no heartbeat; 30 s later its lease has run out
        conn.execute(update(series).values(lease_expires=time.time() - 1))
    assert b.claim_series(0) == "2.25.6"
    copy = a.add_delivery(ids[0], "research", "2.25.6", b"a's copy")
    with pytest.raises(LeaseLost, match="node b took it over"):
        a.protected("2.25.6", "default", ids, [copy])  # a woke up: its result is not recorded
    assert a.due_deliveries() == []  # nor is its copy released to be sent
    b.protected("2.25.6", "default", ids)
    assert b.counts() == {"protected": 2} and _owner(b, "2.25.6") is None


def test_a_restarted_node_lets_go_of_its_old_leases(tmp_path: Path, nodes: Nodes) -> None:
    a = _spool(tmp_path, nodes, "a")
    _accept(a, "2.25.8")
    assert a.claim_series(0) == "2.25.8"
    again = _spool(tmp_path, nodes, "a")  # the same node started again after a kill -9
    assert again.claim_series(0) == "2.25.8"


def test_two_nodes_never_upload_the_same_object(tmp_path: Path, nodes: Nodes) -> None:
    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    for n in range(6):
        ids = _accept(a, f"2.25.9{n}", 10)
        a.protected(f"2.25.9{n}", "default", ids)
    start = threading.Barrier(2)

    def drain(spool: Spool) -> list[int]:
        start.wait()
        taken: list[int] = []
        while batch := spool.due(limit=7):
            taken += [o.id for o in batch]
            spool.forwarded_many([o.id for o in batch])
        return taken

    with ThreadPoolExecutor(2) as pool:
        got_a, got_b = pool.map(drain, (a, b))
    assert sorted(got_a + got_b) == list(range(1, 61)) and not set(got_a) & set(got_b)


def test_a_forward_claim_of_a_dead_node_is_taken_over(tmp_path: Path, nodes: Nodes) -> None:
    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    ids = _accept(a, "2.25.10", 2)
    a.protected("2.25.10", "default", ids)
    assert [o.id for o in a.due()] == ids and b.due() == []
    with a.state.write() as conn:
        conn.execute(text("UPDATE instances SET lease_expires = 0"))
    assert [o.id for o in b.due()] == ids


def test_two_nodes_making_one_studys_key_at_once_end_with_one_key(tmp_path: Path, nodes: Nodes) -> None:
    ring = Keyring.create(tmp_path / "keyring.json")
    spools = [_spool(tmp_path, nodes, node) for node in ("a", "b")]
    start = threading.Barrier(8)

    def key(n: int) -> bytes:
        start.wait()
        return spools[n % 2].for_study("1.2.3.4", ring)[2]

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(key, range(8)))
    assert len(keys) == 1
    with spools[0].state.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM study_keys")).scalar_one() == 1


def test_a_node_starting_leaves_the_other_nodes_files_alone(tmp_path: Path, nodes: Nodes) -> None:
    a = _spool(tmp_path, nodes, "a")
    arriving = a.receiving / "tmp-a.dcm"
    arriving.write_bytes(b"half an object, still arriving at a")
    _accept(a, "2.25.11", 2)
    with a.state.write() as conn:  # a lost the commit of its second object (power loss)
        conn.execute(text("DELETE FROM instances WHERE sop_token = '2.25.11.1'"))
    b = _spool(tmp_path, nodes, "b")
    assert b.receiving != a.receiving and arriving.exists()
    seen: list[str] = []

    def describe(path: Path) -> tuple[tuple[str, str, str, str], str | None]:
        seen.append(path.name)
        return ("2.25.11", "2.25.11.1", "CT", CT), None

    if b.state.single_node:  # SQLite is one node by definition: whoever starts recovers every file
        assert b.recover(describe) == 1
    else:
        assert b.recover(describe) == 0 and seen == []  # a's file, a's to recover
        assert _spool(tmp_path, nodes, "a").recover(describe) == 1
    assert len(seen) == 1
    _spool(tmp_path, nodes, "a")
    assert not arriving.exists()  # a's own restart does clean its own receiving folder


# -- schema versions ----------------------------------------------------------------------

OLD_SPOOL = """
CREATE TABLE instances (id INTEGER PRIMARY KEY, path TEXT NOT NULL, calling_ae TEXT NOT NULL,
    series_token TEXT NOT NULL, sop_token TEXT NOT NULL, modality TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
    received_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'received', out_path TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, forwarded_at REAL, error TEXT);
CREATE INDEX instances_state ON instances(state, series_token);
CREATE TABLE series (series_token TEXT PRIMARY KEY, state TEXT NOT NULL, last_received REAL NOT NULL,
    route TEXT, reason TEXT, updated_at REAL NOT NULL);
CREATE TABLE quarantine_actions (action TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL, destination TEXT NOT NULL,
    series_token TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'staged', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0, delivered_at REAL, error TEXT);
CREATE INDEX deliveries_state ON deliveries(state, next_attempt);
CREATE TABLE study_keys (study_uid TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped BLOB NOT NULL);
INSERT INTO instances (path, calling_ae, series_token, sop_token, modality, sop_class_uid, received_at)
    VALUES ('0123.4354.00_00.dcm', 'CT', '2.25.12', '2.25.12.1', 'CT', '1.2', 1.0);
INSERT INTO series VALUES ('2.25.12', 'receiving', 1.0, NULL, NULL, 1.0);
"""
OLD_INDEX = """
CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL, orthanc_id TEXT NOT NULL, sop_class TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
    stages TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BLOB NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
INSERT INTO instances VALUES ('1.9.1.1', '1.9', '1.9.1', 'P', 'o1', '1.2', '', 'none', 'k', x'00', x'00', x'00');
PRAGMA user_version = 2;
"""


def _config(tmp_path: Path, url: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "keyring": str(tmp_path / "k.json"), "spool": {"path": str(tmp_path / "spool")}, "routes": [{"name": "all"}],
        "state": {"url": url, "node": "n1"}}))
    return path


def test_db_upgrade_brings_a_previous_versions_sqlite_spool_and_its_index_over(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "spool").mkdir()
    with sqlite3.connect(tmp_path / "spool" / "spool.sqlite3") as db:
        db.executescript(OLD_SPOOL)
    with sqlite3.connect(tmp_path / "spool" / "index.sqlite3") as db:
        db.executescript(OLD_INDEX)
    (tmp_path / "spool" / "incoming").mkdir()
    (tmp_path / "spool" / "incoming" / "0123.4354.00_00.dcm").write_bytes(b"object")
    config = _config(tmp_path)
    assert main(["db", "current", "--config", str(config)]) == 1
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"at revision {head()} (was none)" in capsys.readouterr().out
    assert main(["db", "current", "--config", str(config)]) == 0
    spool = Spool(tmp_path / "spool", intake=False)
    assert [i.sop_token for i in spool.received("2.25.12")] == ["2.25.12.1"] and spool.forced_route("2.25.12") is None
    assert spool.room() > 0  # the size column is there
    assert spool.recover(lambda p: (("x", "x", "x", "x"), None)) == 0  # the file of the old name counts as known
    with spool.state.read() as conn:
        assert conn.execute(text("SELECT orthanc_id FROM retrieval_index")).scalars().all() == ["o1"]


def test_an_older_sqlite_spool_is_upgraded_by_the_node_itself(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    with sqlite3.connect(tmp_path / "spool" / "spool.sqlite3") as db:
        db.executescript(OLD_SPOOL)
    state = open_state(Config.model_validate(yaml.safe_load(_config(tmp_path).read_text())))
    assert current(state) == head()
    state.close()


def test_db_upgrade_on_an_empty_postgresql_database_and_a_node_refusing_an_old_schema(
        tmp_path: Path, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres.create_database(f"upgrade_{int(time.time() * 1000) % 10**8}")
    config_path = _config(tmp_path, url.replace("postgresql+psycopg://", "postgresql://"))
    config = Config.model_validate(yaml.safe_load(config_path.read_text()))
    (tmp_path / "spool").mkdir()
    with pytest.raises(StateError, match="gateway db upgrade"):
        open_state(config)  # a cluster node never migrates by itself
    assert "gateway db upgrade" in (state_warning(config) or "")  # check-config says so too
    assert main(["status", "--config", str(config_path)]) == 2  # nor an admin command: the message, no traceback
    assert "run 'gateway db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--config", str(config_path)]) == 0
    assert main(["db", "upgrade", "--config", str(config_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert state_warning(config) is None
    state = open_state(config)
    Spool(tmp_path / "spool", state=state).accept(b"x", "CT1", "2.25.13", "2.25.13.1", "CT", CT)
    state.close()


def test_check_config_names_an_unreachable_state_database(tmp_path: Path) -> None:
    config = Config.model_validate(yaml.safe_load(_config(tmp_path, "postgresql://gateway@127.0.0.1:1/none")
                                                  .read_text()))
    assert "not reachable" in (state_warning(config) or "")


def test_a_bad_state_section_is_named() -> None:
    base = {"senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://h", "username": "u", "password": "p"},
            "keyring": "k", "spool": {"path": "s"}, "routes": [{"name": "all"}]}
    with pytest.raises(ValueError, match="postgresql://"):
        Config.model_validate({**base, "state": {"url": "mysql://x"}})
    with pytest.raises(ValueError, match="node id"):
        Config.model_validate({**base, "state": {"node": "a/b"}})
    assert Config.model_validate(base).state.url == ""


def _expiry(spool: Spool, token: str) -> float:
    with spool.state.read() as conn:
        return float(conn.execute(text("SELECT lease_expires FROM series WHERE series_token=:t"),
                                  {"t": token}).scalar_one())


def _owner(spool: Spool, token: str) -> str | None:
    with spool.state.read() as conn:
        return conn.execute(text("SELECT lease_owner FROM series WHERE series_token=:t"), {"t": token}).scalar_one()


def _worker(tmp_path: Path, spool: Spool) -> Worker:
    """A worker on ``spool`` whose protection the test replaces (no keyring, no Orthanc)."""
    config = Config.model_validate({
        "senders": [{"ae_title": "CT1"}], "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
        "keyring": str(tmp_path / "k.json"), "spool": {"path": str(tmp_path / "spool")},
        "routes": [{"name": "all"}], "scheduler": {"settle_seconds": 0}})
    return Worker(config, None, spool, None, None, AuditLog(tmp_path / "audit.jsonl"))  # type: ignore[arg-type]


def test_a_worker_protects_only_the_series_it_holds_the_lease_of(tmp_path: Path, nodes: Nodes,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import worker as worker_module

    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    for token in ("2.25.20", "2.25.21"):
        _accept(b, token)
    assert b.claim_series(0) == "2.25.20"  # b is protecting it
    protected: list[int] = []

    def protect(sources, route, keyring, keys, pool=None, outputs=None):  # type: ignore[no-untyped-def]
        protected.append(len(sources))
        raise RuntimeError("stop here")  # the series goes to quarantine: enough to see which one was taken

    monkeypatch.setattr(worker_module, "protect_batches", protect)
    worker = _worker(tmp_path, a)
    worker.process_settled()
    assert protected == [1]
    assert [s.series_token for s in a.set_aside()] == ["2.25.21"] and _owner(a, "2.25.21") is None
    assert _owner(a, "2.25.20") == "b"


def test_a_worker_whose_lease_was_taken_over_records_nothing_and_goes_on(
        tmp_path: Path, nodes: Nodes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from gateway import worker as worker_module

    a, b = _spool(tmp_path, nodes, "a"), _spool(tmp_path, nodes, "b")
    _accept(a, "2.25.30")

    def protect(sources, route, keyring, keys, pool=None, outputs=None):  # type: ignore[no-untyped-def]
        with a.state.write() as conn:  # a stalls past its lease; b takes the series over
            conn.execute(update(series).values(lease_expires=time.time() - 1))
        assert b.claim_series(0) == "2.25.30"
        raise RuntimeError("a's protection fails late")  # a would quarantine the series: not its own any more

    monkeypatch.setattr(worker_module, "protect_batches", protect)
    worker = _worker(tmp_path, a)
    worker.process_settled()
    assert a.counts() == {"received": 1} and a.set_aside() == [] and _owner(a, "2.25.30") == "b"
    assert "node b took it over" in caplog.text
