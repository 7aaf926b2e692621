"""Intake and protect-and-forward throughput, next to Orthanc's own C-STORE intake.

Prints one JSON object. Same machine, same run, same 512x512 16-bit CT instances:
- gateway_intake: storescu -> gateway, acknowledged (durable in the spool), no processing
  running alongside (settle time longer than the send);
- orthanc_intake: storescu -> a second Orthanc directly (protected copies; without the filter plugin,
  which cannot verify what C-STORE rewrites; the same size as the originals to within a few KB);
- protect_and_forward: from the first byte sent until the last protected object is stored
  in Orthanc, with the gateway's default pipeline (PS3.15 + envelope + gate, plugin none);
- protect_and_forward_sustained: the same objects over the time from the moment the series
  settled (intake done plus the settle time) until the last one is in Orthanc: the rate of
  protection and forwarding themselves, divided by Orthanc's own intake rate (the issue's
  measure; the end-to-end figure also holds the intake and the settle time). Split in two
  from the gateway's log: ``protect_seconds`` from the settle until the last series was
  recorded protected, ``upload_seconds`` from then until the last object is in Orthanc.

With ``--series K`` the objects are one study of K series of equal size, sent in order: a
series leaves only once all of it passed the gate, so within one series protection and
upload follow each other, while across series one is uploaded as the next is protected.

    python bench/ingest.py [--instances 300] [--series 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, run_cli, storescu

SETTLE_SECONDS = 1


def _wait(predicate, timeout: float = 900.0, every: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("benchmark condition not met")
        time.sleep(every)


def warmed(gateway: GatewayProcess, timeout: float = 30.0) -> GatewayProcess:
    """Wait until the gateway's protect processes (started with the service) have started
    and gone idle: a service's start-up is not what is measured, as Orthanc's is not. A
    gateway without them (older code) after 3 s."""
    assert gateway.process is not None
    pid, deadline, last = gateway.process.pid, time.time() + timeout, -1
    alone = time.time() + 3

    def busy() -> int:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ticks = 0
        for child in children:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks if len(children) >= 2 else -1

    while time.time() < deadline:
        now = busy()
        if (now == last and now >= 0) or (now < 0 and time.time() > alone
                                          and not Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
            return gateway
        last = now
        time.sleep(0.5)
    return gateway


def _last_protected(log: Path) -> float:
    """When the gateway last recorded a series protected (its log's time stamps)."""
    stamps = [line[:23] for line in log.read_text().splitlines() if "objects protected by route" in line]
    return max(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp in stamps)


class PlainOrthanc(OrthancServer):
    """Orthanc without the privacy filter: over C-STORE Orthanc writes its own file meta, so
    the authenticity tag (an HMAC over the file as the gateway uploads it) cannot verify."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = json.loads(path.read_text())
        del config["PythonScript"]
        path.write_text(json.dumps(config, indent=2))
        return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--series", type=int, default=1)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        study = root / "study"
        study.mkdir()
        study_uid = None
        for k in range(args.series):
            count = n // args.series + (1 if k < n % args.series else 0)
            series = synthetic.ct_series(count, size=512, study_uid=study_uid, series_number=k + 1)
            study_uid = str(series[0].StudyInstanceUID)
            for i, ds in enumerate(series):
                ds.save_as(study / f"{k:02d}-{i:04d}.dcm", enforce_file_format=True)
        size = sum(p.stat().st_size for p in study.iterdir()) / n

        orthanc = OrthancServer(root / "orthanc", gateway_port=free_port()).start()
        try:
            # 1. gateway intake only
            gw = warmed(GatewayProcess(root / "gw1", orthanc, settle_seconds=3600).start())
            t = time.perf_counter()
            storescu(gw.port, study)
            intake = time.perf_counter() - t
            gw.stop()

            # 2. Orthanc's own intake of the same objects (protected; a second Orthanc, no filter)
            protected = root / "protected"
            run_cli("protect", str(study), str(protected), "--keyring", str(gw.keyring))
            plain = PlainOrthanc(root / "plain").start()
            try:
                t = time.perf_counter()
                storescu(plain.dicom_port, protected, calling="GATEWAY", called="ORTHANC")
                direct = time.perf_counter() - t
                _wait(lambda: len(plain.get("instances")) == n)
            finally:
                plain.stop()

            # 3. sustained protect and forward
            gw = warmed(GatewayProcess(root / "gw2", orthanc, settle_seconds=SETTLE_SECONDS).start())
            t, started = time.perf_counter(), time.time()
            storescu(gw.port, study)
            settled = time.perf_counter() - t + SETTLE_SECONDS
            _wait(lambda: len(orthanc.get("instances")) == n, every=0.05)
            pipeline = time.perf_counter() - t
            protected = _last_protected(gw.log_path) - started
            gw.stop()
        finally:
            orthanc.stop()

    print(json.dumps({
        "instances": n,
        "series": args.series,
        "bytes_per_instance": round(size),
        "gateway_intake_per_s": round(n / intake, 1),
        "orthanc_intake_per_s": round(n / direct, 1),
        "intake_ratio_gateway_over_orthanc": round(direct / intake, 2),
        "protect_and_forward_per_s": round(n / pipeline, 1),
        "protect_and_forward_seconds": round(pipeline, 2),
        "settle_seconds": SETTLE_SECONDS,
        "protect_and_forward_sustained_per_s": round(n / (pipeline - settled), 1),
        "sustained_ratio_over_orthanc_intake": round(direct / (pipeline - settled), 2),
        "protect_seconds": round(protected - settled, 2),
        "upload_seconds": round(pipeline - protected, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
