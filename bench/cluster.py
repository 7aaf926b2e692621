"""End-to-end throughput of the cluster mode with 1, 2 and 3 gateway nodes, same run.

Prints one JSON object. Real parts on this machine: one PostgreSQL for the gateway's state,
another for Orthanc's index (so the two costs can be told apart), two Orthanc servers on
that index with one storage folder, and N ``gateway serve`` nodes on one state database, one
shared spool folder and one keyring. Each run sends the same objects, in ``--series``
series, by as many concurrent storescu associations spread round-robin over the nodes (a
load balancer's work), and times from the first byte sent until Orthanc holds every
object. Per run:

- ``objects_per_s``: end to end, intake to stored in Orthanc;
- ``scaling_efficiency``: objects/s over N times the 1-node figure;
- ``cpu_ms_per_object``: CPU time of the gateway nodes, Orthanc and each PostgreSQL
  (processes and their reaped children, from /proc), and ``objects_per_cpu_core_s``: what one
  fully used core carries (the figure to size a cluster with; this machine has few cores,
  shared with other work, so wall-clock scaling flattens early);
- ``state_db`` / ``orthanc_db``: per object, transactions (round trips that commit; each
  holds one or a few statements), rows read and written, WAL bytes and database growth,
  from pg_stat_database and pg_current_wal_lsn; ``idle_xact_per_s`` is what the nodes
  spend with nothing to do (lease renewal, polling), measured before the objects are sent,
  and ``*_net_of_idle`` the state's figures per object without it. Rows read on Orthanc's
  index swing with its planner's statistics (before and after autovacuum's ANALYZE). The benchmark
  watches Orthanc's storage folder, not its index, so its own polling costs nothing there.

A 1-node run on SQLite (the default, no PostgreSQL state) comes first for comparison.

    python -m bench.cluster [--objects 120] [--series 6] [--size 128] [--nodes 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, run_cli, storescu
from testkit.postgres import PostgresServer

_TICK = os.sysconf("SC_CLK_TCK")
_STATS_SETTLE_S = 11  # PostgreSQL 15 backends flush their statistics within 10 s of going idle


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children that have exited (reaped), plus its
    living descendants."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total += sum(int(f) for f in fields[11:15]) / _TICK  # utime stime cutime cstime
    for child in _children(pid):
        total += _cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def _postmaster(pg: PostgresServer) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


@dataclass
class _DbCounters:
    xact: int
    rows_read: int
    rows_written: int
    size: int
    wal: int

    @classmethod
    def read(cls, pg: PostgresServer, database: str) -> _DbCounters:
        with psycopg.connect(pg.dsn(database), autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched,"
                " tup_inserted + tup_updated + tup_deleted, pg_database_size(datname),"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
                " FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()
        assert row is not None
        return cls(*(int(v) for v in row))

    def per_object(self, before: _DbCounters, objects: int, own_xacts: int = 0) -> dict[str, float]:
        """Per object; ``own_xacts``: this benchmark's own reads of the counters, taken off."""
        return {"xact": round((self.xact - before.xact - own_xacts) / objects, 2),
                "rows_read": round((self.rows_read - before.rows_read) / objects, 1),
                "rows_written": round((self.rows_written - before.rows_written) / objects, 1),
                "wal_bytes": round((self.wal - before.wal) / objects),
                "db_growth_bytes": round((self.size - before.size) / objects)}


def _send(nodes: list[GatewayProcess], series_folders: list[Path]) -> None:
    """One storescu association per series, at once, round-robin over the nodes."""
    failures: list[str] = []

    def one(node: GatewayProcess, folder: Path) -> None:
        done = storescu(node.port, folder, check=False)
        if done.returncode != 0:
            failures.append(done.stderr[-500:])

    threads = [threading.Thread(target=one, args=(nodes[i % len(nodes)], folder))
               for i, folder in enumerate(series_folders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")


def _files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def _wait(predicate, timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("benchmark condition not met")
        time.sleep(0.1)


def _study(root: Path, objects: int, series: int, size: int, run: str) -> list[Path]:
    """``objects`` in ``series`` folders, one study of its own for this run."""
    identity = synthetic.Identity(accession=f"BENCH-{run}"[:16])
    folders, study_uid = [], None
    per = [objects // series + (1 if i < objects % series else 0) for i in range(series)]
    for number, count in enumerate(per, start=1):
        folder = root / run / f"series{number}"
        folder.mkdir(parents=True)
        datasets = synthetic.ct_series(count, size=size, identity=identity, study_uid=study_uid,
                                       series_number=number)
        study_uid = str(datasets[0].StudyInstanceUID)
        for i, ds in enumerate(datasets):
            ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


def _run(root: Path, name: str, count: int, orthancs: list[OrthancServer], state: PostgresServer | None,
         index: PostgresServer, args: argparse.Namespace) -> dict[str, Any]:
    folders = _study(root / "studies", args.objects, args.series, args.size, name)
    shared = root / name
    database = f"state_{name}"
    url = state.create_database(database) if state is not None else None
    nodes = []
    for i in range(count):
        primary = orthancs[i % len(orthancs)]
        nodes.append(GatewayProcess(
            shared / f"node{i}", primary, failover=[o for o in orthancs if o is not primary],
            port=free_port(), settle_seconds=args.settle, state_url=url, node=f"node{i}" if url else None,
            shared_keyring=shared / "keyring.json" if url else None, shared_spool=shared / "spool" if url else None,
            extra={"log_level": "WARNING"}))
    if url:
        nodes[0].write_config()
        run_cli("db", "upgrade", "--config", str(nodes[0].config_path))
    for node in nodes:
        node.start()
    try:
        sent = [p for folder in folders for p in folder.iterdir()]
        result: dict[str, Any] = {"nodes": count, "state": "postgresql" if url else "sqlite",
                                  "bytes_per_object": round(sum(p.stat().st_size for p in sent) / len(sent))}
        if state is not None:
            idle_before = _DbCounters.read(state, database)
            time.sleep(args.idle)
            idle_after = _DbCounters.read(state, database)
            result["idle_xact_per_s"] = round((idle_after.xact - idle_before.xact - 1) / args.idle, 1)
            result["idle_rows_read_per_s"] = round((idle_after.rows_read - idle_before.rows_read) / args.idle)
        storage = orthancs[0].storage
        assert storage is not None
        start_count = _files(storage)
        held_before = len(orthancs[0].get("instances"))
        state_before = _DbCounters.read(state, database) if state is not None else None
        index_before = _DbCounters.read(index, "orthanc")
        cpu = {"gateway": lambda: sum(_cpu_seconds(n.process.pid) for n in nodes if n.process),
               "orthanc": lambda: sum(_cpu_seconds(o.process.pid) for o in orthancs if o.process),
               "postgresql_index": lambda: _cpu_seconds(_postmaster(index))}
        if state is not None:
            cpu["postgresql_state"] = lambda: _cpu_seconds(_postmaster(state))
        cpu_before = {k: f() for k, f in cpu.items()}
        t = time.perf_counter()
        _send(nodes, folders)
        # Orthanc's files, counted without asking its index (each request there would count
        # in the figures measured); every new file is one stored object.
        _wait(lambda: _files(storage) - start_count >= args.objects)
        elapsed = time.perf_counter() - t
        cpu_used = {k: f() - cpu_before[k] for k, f in cpu.items()}
    finally:
        for node in nodes:
            node.stop()
    time.sleep(_STATS_SETTLE_S)
    n = args.objects
    result.update({
        "seconds": round(elapsed, 2),
        "objects_per_s": round(n / elapsed, 1),
        "cpu_ms_per_object": {k: round(1000 * v / n, 1) for k, v in cpu_used.items()},
        "objects_per_cpu_core_s": round(n / sum(cpu_used.values()), 1),
        "gateway_objects_per_cpu_core_s": round(n / cpu_used["gateway"], 1),
        "orthanc_db": _DbCounters.read(index, "orthanc").per_object(index_before, n),
    })
    if state is not None and state_before is not None:
        result["state_db"] = _DbCounters.read(state, database).per_object(state_before, n, own_xacts=1)
        # what the same nodes spend idle in as long (polls, lease renewal) taken off
        for key in ("xact", "rows_read"):
            result["state_db"][f"{key}_net_of_idle"] = round(
                result["state_db"][key] - result[f"idle_{key}_per_s"] * elapsed / n, 2)
    held = len(orthancs[0].get("instances"))
    if held - held_before != n:
        raise RuntimeError(f"Orthanc holds {held} instances, not {n} more than before")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=120)
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="rows and columns of each 16-bit CT image")
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle nodes measured before each run")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        state, index = PostgresServer().start(), PostgresServer().start()
        orthancs: list[OrthancServer] = []
        try:
            index.create_database("orthanc")
            for name in ("orthanc-a", "orthanc-b"):
                orthancs.append(OrthancServer(root / name, gateway_port=free_port(), postgres_port=index.port,
                                              storage=root / "orthanc-storage").start())
            runs = [] if args.skip_sqlite else [_run(root, "sqlite1", 1, orthancs, None, index, args)]
            runs += [_run(root, f"pg{n}", n, orthancs, state, index, args) for n in args.nodes]
        finally:
            for orthanc in orthancs:
                orthanc.stop()
            state.stop()
            index.stop()
    single = next((r["objects_per_s"] for r in runs if r["state"] == "postgresql" and r["nodes"] == 1), None)
    for r in runs:
        if single and r["state"] == "postgresql":
            r["scaling_efficiency"] = round(r["objects_per_s"] / (r["nodes"] * single), 2)
    print(json.dumps({
        "objects": args.objects, "series": args.series, "image": f"{args.size}x{args.size} 16-bit CT",
        "cores": os.cpu_count(), "load_average_at_end": os.getloadavg()[0],
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
