"""Many modalities at once, and a 2 GB study streaming in: throughput and the gateway's memory.

Prints one JSON object:
- ``concurrent``: SENDERS dcmtk storescu processes (distinct AE titles) each send their own
  study of INSTANCES 512x512 CT objects at the same time, through intake, protection and
  forwarding; every object must be in Orthanc exactly once. Peak resident memory of the
  gateway process (VmHWM) over the whole run.
- ``streaming`` (with --stream-gb): one series of 512 MiB multi-frame objects adding up to
  that many GB. The gateway's peak memory after intake shows that received data goes to disk
  as it arrives; after protection and forwarding, that a series is protected in batches
  (memory bounded by the largest object, not by the series).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from gateway import synthetic
from gateway.localstack import GatewayProcess, OrthancServer, free_port, storescu


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def _wait(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("benchmark condition not met")
        time.sleep(0.5)


def concurrent(root: Path, senders: int, instances: int, size: int) -> dict[str, object]:
    studies = []
    for s in range(senders):
        folder = root / f"study{s}"
        folder.mkdir()
        ident = synthetic.Identity(patient_id=f"LOAD-{s:02d}", accession=f"ACCLOAD{s:02d}")  # its own study UIDs
        for i, ds in enumerate(synthetic.ct_series(instances, size=size, identity=ident)):
            ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
        studies.append(folder)
    orthanc = OrthancServer(root / "orthanc", gateway_port=free_port()).start()
    gateway = GatewayProcess(root / "gateway", orthanc, settle_seconds=2,
                             senders=[{"ae_title": f"MODALITY{s}"} for s in range(senders)]).start()
    try:
        assert gateway.process is not None
        started = time.perf_counter()
        with ThreadPoolExecutor(senders) as pool:
            list(pool.map(lambda s: storescu(gateway.port, studies[s], calling=f"MODALITY{s}"), range(senders)))
        intake = time.perf_counter() - started
        total = senders * instances
        _wait(lambda: len(orthanc.get("instances")) >= total, timeout=3600)
        done = time.perf_counter() - started
        stored = orthanc.get("instances?expand")
        uids = [i["MainDicomTags"]["SOPInstanceUID"] for i in stored]
        return {
            "senders": senders, "instances_each": instances, "image_size": size,
            "in_orthanc": len(uids), "each_exactly_once": len(uids) == len(set(uids)) == total,
            "intake_seconds": round(intake, 2), "intake_per_s": round(total / intake, 1),
            "end_to_end_seconds": round(done, 2), "end_to_end_per_s": round(total / done, 1),
            "gateway_peak_rss_mib": round(peak_rss_mib(gateway.process.pid), 1),
        }
    finally:
        gateway.stop()
        orthanc.stop()


def streaming(root: Path, gigabytes: float) -> dict[str, object]:
    """Objects of 64 frames of 2048x2048 16-bit (512 MiB each) until ``gigabytes`` is reached."""
    folder = root / "big"
    folder.mkdir()
    frames, side = 64, 2048
    per_object = frames * side * side * 2
    count = max(1, round(gigabytes * 2**30 / per_object))
    study, series = generate_uid(), generate_uid()
    template = synthetic.ct_series(1, size=16)[0]
    pixels = np.random.default_rng(0).integers(0, 4000, (frames, side, side), dtype=np.uint16).tobytes()
    for i in range(count):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Rows = ds.Columns = side
        ds.NumberOfFrames = frames
        ds.PixelData = pixels
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    orthanc = OrthancServer(root / "orthanc2", gateway_port=free_port()).start()
    gateway = GatewayProcess(root / "gateway2", orthanc, settle_seconds=5).start()
    try:
        assert gateway.process is not None
        before = peak_rss_mib(gateway.process.pid)
        started = time.perf_counter()
        storescu(gateway.port, folder)
        seconds = time.perf_counter() - started
        after_intake = peak_rss_mib(gateway.process.pid)  # the series settles 5 s later
        _wait(lambda: len(orthanc.get("instances")) >= count, timeout=3600)
        return {
            "objects": count, "object_mib": per_object // 2**20, "bytes_received": count * per_object,
            "intake_seconds": round(seconds, 1),
            "gateway_peak_rss_mib_before": round(before, 1),
            "gateway_peak_rss_mib_after_intake": round(after_intake, 1),
            "gateway_peak_rss_mib_after_protect_and_forward": round(peak_rss_mib(gateway.process.pid), 1),
        }
    finally:
        gateway.stop()
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--stream-gb", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        result: dict[str, object] = {"concurrent": concurrent(Path(tmp), args.senders, args.instances, args.size)}
        if args.stream_gb:
            result["streaming"] = streaming(Path(tmp), args.stream_gb)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
