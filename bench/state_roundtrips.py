"""PostgreSQL round trips and time per object in the state layer, phase by phase.

Prints one JSON object. A real PostgreSQL (``testkit.postgres``, loopback) and the spool's
own calls in the order the worker makes them for one series: intake (``accept``, per object),
the series' lease (``claim_series``, ``release_series``), its reads (``received``,
``forced_route``, ``for_study`` per protect batch), ``protected``, then forwarding in batches of 64 (``due``,
the ``index.get`` that ``publish`` makes per object, ``index.put_many``, ``forwarded_many``).
A round trip is one statement sent, plus BEGIN and COMMIT of a write transaction (psycopg
sends each on its own; a statement in autocommit has neither). The same calls on SQLite give
the single node's time for comparison.

    python -m bench.state_roundtrips [--objects 200] [--series-size 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event

from gateway import envelope
from gateway.index import Entry, Index, Sealing
from gateway.keyring import Keyring
from gateway.spool import Spool
from gateway.state.engine import State, postgres_engine, sqlite_engine
from gateway.state.migrate import upgrade
from testkit.postgres import PostgresServer

CT = "1.2.840.10008.5.1.4.1.1.2"
BATCH = 64  # Spool.due's default: one forward batch
PROTECT_BATCH = 16  # objects per protect batch (for_study once each); the worker's batches are of this order


class RoundTrips:
    """Counts what goes to the server, by the phase set in ``phase``."""

    def __init__(self, state: State) -> None:
        self.phase = ""
        self.trips: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        engine = state.engine

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(*_: Any) -> None:
            self.trips[self.phase] += 1

        def _transaction(conn: Connection) -> None:
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                self.trips[self.phase] += 1

        event.listen(engine, "begin", _transaction)
        event.listen(engine, "commit", _transaction)

    def timed(self, phase: str, fn: Any, *args: Any) -> Any:
        self.phase = phase
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[phase] += time.perf_counter() - start


def run(state: State, folder: Path, objects: int, series_size: int) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    ring = Keyring.create(folder / "keyring.json")
    spool = Spool(folder / "spool", state=state)
    index = Index(state)
    count = RoundTrips(state)
    key = envelope.new_data_key()
    sealing = Sealing(*envelope.wrap(ring, key), key)
    tokens = []
    for n in range(objects):
        token = f"2.25.{n // series_size}"
        count.timed("intake", spool.accept, b"object bytes", "CT1", token, f"{token}.{n}", "CT", CT)
        if not tokens or tokens[-1] != token:
            tokens.append(token)
    while (token := count.timed("lease", spool.claim_series, 0)) is not None:
        items = count.timed("reads", spool.received, token)
        count.timed("reads", spool.forced_route, token)
        for _ in range(0, len(items), PROTECT_BATCH):
            count.timed("reads", spool.for_study, "1.2.3", ring)
        count.timed("protect", spool.protected, token, "default", [i.id for i in items])
        count.timed("lease", spool.release_series, token)
    while batch := count.timed("forward", spool.due, BATCH):
        for item in batch:
            count.timed("forward", index.get, item.sop_token, ring)
        entries = [(Entry("1.2.3", "1.2.3.4", item.sop_token, "P", f"o{item.id}", CT, "", ("none",),
                          {"PatientName": "DOE^JANE"}, "d"), sealing) for item in batch]
        count.timed("index", index.put_many, entries)
        count.timed("forward", spool.forwarded_many, [item.id for item in batch])
    assert spool.counts() == {"forwarded": objects}, spool.counts()
    phases = ("intake", "lease", "reads", "protect", "forward", "index")
    per_object = {p: round(count.trips[p] / objects, 2) for p in phases}
    return {"round_trips_per_object": {**per_object, "total": round(sum(per_object.values()), 2)},
            "ms_per_object": {p: round(1000 * count.seconds[p] / objects, 3) for p in phases},
            "lease_per_series": {"round_trips": round(count.trips["lease"] / len(tokens), 2),
                                 "ms": round(1000 * count.seconds["lease"] / len(tokens), 2)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--series-size", type=int, default=50)
    args = parser.parse_args()
    out: dict[str, Any] = {"objects": args.objects, "series_size": args.series_size, "forward_batch": BATCH,
                           "protect_batch": PROTECT_BATCH}
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        server = PostgresServer().start()
        try:
            state = State(postgres_engine(server.create_database("bench")), "bench")
            upgrade(state)
            out["postgresql"] = run(state, Path(tmp) / "pg", args.objects, args.series_size)
            state.close()
        finally:
            server.stop()
        (Path(tmp) / "lite").mkdir()
        state = State(sqlite_engine(Path(tmp) / "lite" / "spool.sqlite3"), "bench")
        upgrade(state)
        out["sqlite"] = run(state, Path(tmp) / "lite", args.objects, args.series_size)
        out["sqlite"].pop("round_trips_per_object")  # in-process: no round trips, only time
        out["sqlite"]["lease_per_series"].pop("round_trips")
        state.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
