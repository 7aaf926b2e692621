"""The in-process part of a C-STORE in the spool: the row (``Spool._add_row``) and the
free-space check (``Spool.room``), without the file's fsyncs. Prints one JSON object.

    python -m bench.spool_intake [--calls 1000]

Run it on two checkouts one after the other (same minute) to compare the state layer's
cost per object on the single node's SQLite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gateway.spool import Spool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        spool = Spool(Path(tmp) / "spool")
        received = spool.incoming / "0123.4354.00_00.dcm"  # a received file's name (calling AE "CT")
        received.write_bytes(b"object")
        for i in range(50):  # warm up: connections, statement caches
            spool._add_row(received, "2.25.0", f"warm.{i}", "CT", "1.2")
            spool.room()
        start = time.perf_counter()
        for i in range(args.calls):
            spool._add_row(received, f"2.25.{i // 50 + 1}", f"2.25.x.{i}", "CT", "1.2")
        add_row = (time.perf_counter() - start) / args.calls
        start = time.perf_counter()
        for _ in range(args.calls):
            spool.room()
        room = (time.perf_counter() - start) / args.calls
        spool.close()
    print(json.dumps({"calls": args.calls, "add_row_ms": round(1000 * add_row, 3), "room_ms": round(1000 * room, 3),
                      "per_c_store_ms": round(1000 * (add_row + room), 3)}, indent=2))


if __name__ == "__main__":
    main()
