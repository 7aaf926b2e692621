"""What one C-STORE costs the gateway after its bytes are on disk, step by step.

Prints one JSON object: mean and median milliseconds of each step the listener takes
between pynetdicom's last write of a received 512x512 CT object and the Success answer,
each timed on its own over N objects written to the spool's receiving folder as pynetdicom
writes them (no fsync): the spool's room check, the structural check that also reads the
header's tokens (``integrity.verify``), the hard link into ``incoming/``, the file's fsync,
the folder's fsync and the SQLite row; then ``as_shipped``: the same objects taken in the
way the listener does it (``Spool.arrive`` starts the link and both fsyncs in the
background, the check and the row run meanwhile, ``Spool.accept`` waits for them).
pynetdicom's own work (PDUs, its reactors) is not in it: ``bench/ingest.py`` has the whole.

    python -m bench.intake_steps [--objects 500]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from gateway import spool as spool_module
from gateway.integrity import verify
from gateway.pseudonym import Pseudonymizer
from gateway.spool import Spool
from testkit import synthetic

STEPS = ("room", "verify", "link", "fsync_file", "fsync_folder", "row")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=500)
    n = parser.parse_args().objects
    objects = []
    for ds in synthetic.ct_series(20, size=512):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        objects.append(buf.getvalue())
    pseudonyms = Pseudonymizer(os.urandom(32))
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    shipped: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        spool = Spool(Path(tmp) / "spool")
        for i in range(n):
            received = spool.receiving / f"{i}.dcm"
            received.write_bytes(objects[i % len(objects)])
            marks = [time.perf_counter()]
            spool.room()
            marks.append(time.perf_counter())
            header = verify(received)
            series, sop = pseudonyms.uid(header.series), pseudonyms.uid(header.sop_instance)
            marks.append(time.perf_counter())
            name = spool.incoming / f"{i:08d}.{b'CT1'.hex()}.{b'GATEWAY'.hex()}_{b'127.0.0.1'.hex()}.dcm"
            os.link(received, name)
            marks.append(time.perf_counter())
            spool_module._fsync_file(name)
            marks.append(time.perf_counter())
            spool_module._fsync_dir(spool.incoming)
            marks.append(time.perf_counter())
            spool._add_row(name, len(objects[0]), series, sop, "CT", header.sop_class)
            marks.append(time.perf_counter())
            received.unlink()
            for step, start, end in zip(STEPS, marks, marks[1:], strict=False):
                times[step].append(1000 * (end - start))
        for i in range(n):
            received = spool.receiving / f"s{i}.dcm"
            received.write_bytes(objects[i % len(objects)])
            start = time.perf_counter()
            spool.room()
            arrival = spool.arrive(received, "CT1", "GATEWAY", "127.0.0.1")
            header = verify(received)
            spool.accept(arrival, "CT1", pseudonyms.uid(header.series), pseudonyms.uid(header.sop_instance), "CT",
                         header.sop_class)
            shipped.append(1000 * (time.perf_counter() - start))
            received.unlink()
        spool.close()
    print(json.dumps({
        "objects": n, "bytes_per_object": len(objects[0]),
        "mean_ms": {step: round(statistics.mean(v), 3) for step, v in times.items()},
        "median_ms": {step: round(statistics.median(v), 3) for step, v in times.items()},
        "sum_of_means_ms": round(sum(statistics.mean(v) for v in times.values()), 2),
        "as_shipped_ms": {"mean": round(statistics.mean(shipped), 3), "median": round(statistics.median(shipped), 3)},
    }, indent=2))


if __name__ == "__main__":
    main()
