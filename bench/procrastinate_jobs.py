"""Round trips and time per job in procrastinate, the job library issue 15 weighed against
series leases (docs/scaling.md, "procrastinate or leases in the series table").

Prints one JSON object: a loopback PostgreSQL (``testkit.postgres``), one no-op task with a
queueing lock per job (as a series would have), N jobs deferred, then run by one worker
until the queue is empty; statements counted at psycopg's cursor. procrastinate is not a
dependency of the gateway: install it beside, e.g.

    pip install --target /tmp/procrastinate procrastinate==3.10.0
    PYTHONPATH=.:/tmp/procrastinate python -m bench.procrastinate_jobs [--jobs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import procrastinate  # type: ignore[import-not-found]
import psycopg

from testkit.postgres import PostgresServer

statements = [0]


def _count(cls: Any, name: str) -> None:
    original = getattr(cls, name)
    if asyncio.iscoroutinefunction(original):
        async def counted_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            statements[0] += 1
            return await original(self, *args, **kwargs)
        setattr(cls, name, counted_async)
    else:
        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            statements[0] += 1
            return original(self, *args, **kwargs)
        setattr(cls, name, counted)


async def measure(app: Any, task: Any, jobs: int, ran: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        statements[0] = 0
        start = time.perf_counter()
        for i in range(jobs):
            await task.configure(queueing_lock=f"series-{i}").defer_async(token=f"series-{i}")
        out["defer_round_trips_per_job"] = statements[0] / jobs
        out["defer_ms_per_job"] = round(1000 * (time.perf_counter() - start) / jobs, 2)
        statements[0] = 0
        try:
            await task.configure(queueing_lock="series-0").defer_async(token="series-0")
        except procrastinate.exceptions.AlreadyEnqueued:
            out["second_defer_of_a_queued_series_round_trips"] = statements[0]
        statements[0] = 0
        start = time.perf_counter()
        await app.run_worker_async(wait=False, concurrency=1, install_signal_handlers=False, listen_notify=False)
        out["worker_round_trips_per_job"] = round(statements[0] / jobs, 2)
        out["worker_ms_per_job"] = round(1000 * (time.perf_counter() - start) / jobs, 2)
        out["jobs_run"] = len(ran)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    for cls in (psycopg.AsyncCursor, psycopg.Cursor):
        for name in ("execute", "executemany"):
            _count(cls, name)
    server = PostgresServer().start()
    try:
        server.create_database("jobs")
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=server.dsn("jobs")))
        ran: list[str] = []

        @app.task(name="protect_series")
        def protect_series(token: str) -> None:
            ran.append(token)

        result = asyncio.run(measure(app, protect_series, args.jobs, ran))
    finally:
        server.stop()
    print(json.dumps({"jobs": args.jobs, **result}, indent=2))


if __name__ == "__main__":
    main()
