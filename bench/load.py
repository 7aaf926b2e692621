"""Many modalities at once, and a 2 GB study streaming in: throughput and the gateway's memory.

Prints one JSON object:
- ``concurrent``: SENDERS dcmtk storescu processes (distinct AE titles) each send their own
  study of INSTANCES 512x512 CT objects at the same time, through intake, protection and
  forwarding; every object must be in Orthanc exactly once. Peak resident memory of the
  gateway process (VmHWM) over the whole run. Then, same run, the same senders send the same
  files straight to an Orthanc without the gateway's filter plugin: Orthanc's own intake with
  SENDERS associations at once, and the gateway's intake divided by it.
- ``streaming`` (with --stream-gb): one series of 512 MiB multi-frame objects adding up to
  that many GB. The gateway's peak memory after intake shows that received data goes to disk
  as it arrives; after protection and forwarding, that a series is protected in batches
  (memory bounded by the largest object, not by the series).
- ``full_disk`` (with --full-disk-mb, as root): the spool on a tmpfs of that size, smaller
  than what SENDERS x INSTANCES need; pynetdicom senders retry every refused object every few
  seconds, as a modality does, until everything is acknowledged. Reports objects
  acknowledged against objects in Orthanc (goal: equal), the 0xA700 answers, associations
  that ended early, and series quarantined (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from bench.ingest import PlainOrthanc, warmed
from gateway.keyring import Keyring
from gateway.pseudonym import Pseudonymizer
from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu


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
    gateway = warmed(GatewayProcess(root / "gateway", orthanc, settle_seconds=2,
                                    senders=[{"ae_title": f"MODALITY{s}"} for s in range(senders)]).start())
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
        peak = peak_rss_mib(gateway.process.pid)
        pid = gateway.process.pid
        workers = sum(peak_rss_mib(int(c)) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    finally:
        gateway.stop()
        orthanc.stop()
    direct = orthanc_intake(root, studies)
    return {
        "senders": senders, "instances_each": instances, "image_size": size,
        "in_orthanc": len(uids), "each_exactly_once": len(uids) == len(set(uids)) == total,
        "intake_seconds": round(intake, 2), "intake_per_s": round(total / intake, 1),
        "orthanc_intake_seconds": round(direct, 2), "orthanc_intake_per_s": round(total / direct, 1),
        "intake_ratio_gateway_over_orthanc": round(direct / intake, 2),
        "end_to_end_seconds": round(done, 2), "end_to_end_per_s": round(total / done, 1),
        "gateway_peak_rss_mib": round(peak, 1),
        "protect_processes_peak_rss_mib": round(workers, 1),
    }


def orthanc_intake(root: Path, studies: list[Path]) -> float:
    """Seconds Orthanc alone takes to receive ``studies``, one storescu each, all at once."""
    plain = PlainOrthanc(root / "plain", gateway_port=free_port()).start()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(studies)) as pool:
            list(pool.map(lambda s: storescu(plain.dicom_port, studies[s], calling="GATEWAY", called="ORTHANC"),
                          range(len(studies))))
        seconds = time.perf_counter() - started
        total = sum(len(list(s.iterdir())) for s in studies)
        _wait(lambda: len(plain.get("instances")) >= total, timeout=600)
        return seconds
    finally:
        plain.stop()


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


def full_disk(root: Path, senders: int, instances: int, size: int, fs_mb: int) -> dict[str, object]:
    """More than the spool's file system holds, sent at once; refused objects resent."""
    mount = root / "small-fs"
    mount.mkdir()
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={fs_mb}m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"skipped": f"mount refused: {mounted.stderr.strip()}"}
    files: list[list[Path]] = []
    for s in range(senders):
        folder = root / f"disk-study{s}"
        folder.mkdir()
        ident = synthetic.Identity(patient_id=f"DISK-{s:02d}", accession=f"ACCDISK{s:02d}")
        files.append([])
        for i, ds in enumerate(synthetic.ct_series(instances, size=size, identity=ident)):
            files[-1].append(folder / f"{i:04d}.dcm")
            ds.save_as(files[-1][-1], enforce_file_format=True)
    acknowledged: set[str] = set()
    counts = {"out_of_resources": 0, "other_failures": 0, "associations_ended_early": 0, "resend_rounds": 0}
    lock = threading.Lock()

    def send(s: int) -> None:
        pending = list(files[s])
        ae = AE(ae_title=f"MODALITY{s}")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        deadline = time.time() + 600
        while pending and time.time() < deadline:
            assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
            refused = []
            for path in pending:
                if not assoc.is_established:
                    with lock:
                        counts["associations_ended_early"] += 1
                    refused.append(path)
                    continue
                status = int(assoc.send_c_store(path).get("Status", -1))
                with lock:
                    if status == 0:
                        acknowledged.add(str(synthetic_uid(path)))
                    else:
                        counts["out_of_resources" if status == 0xA700 else "other_failures"] += 1
                        refused.append(path)
            if assoc.is_established:
                assoc.release()
            pending = refused
            if pending:
                with lock:
                    counts["resend_rounds"] += 1
                time.sleep(5)  # a modality's retry interval

    orthanc = OrthancServer(root / "orthanc3", gateway_port=free_port())
    gateway = GatewayProcess(root / "gateway3", orthanc, settle_seconds=1, senders=[
        {"ae_title": f"MODALITY{s}"} for s in range(senders)], extra={"spool": {
            "path": str(mount / "spool"), "retention_hours": 0, "free_space_reserve_mb": max(1, fs_mb // 8)}})
    try:
        orthanc.start()
        gateway.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(senders) as pool:
            list(pool.map(send, range(senders)))
        sent = time.perf_counter() - started
        pseudonyms = Pseudonymizer(Keyring.load(gateway.keyring).pseudonym_secret)
        wanted = {pseudonyms.uid(uid) for uid in acknowledged}

        def stored() -> set[str]:
            return {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("instances?expand")}

        try:
            _wait(lambda: wanted <= stored(), timeout=600)
        except TimeoutError:
            pass
        held = stored()
        status = gateway.status()
        return {
            "file_system_mib": fs_mb, "reserve_mib": max(1, fs_mb // 8), "senders": senders,
            "instances_each": instances, "image_size": size,
            "bytes_sent_once_mib": round(sum(p.stat().st_size for f in files for p in f) / 2**20, 1),
            "acknowledged": len(acknowledged), "acknowledged_in_orthanc": len(wanted & held),
            "in_orthanc": len(held), "equal": wanted == held, **counts,
            "quarantined_objects": int(status.split("quarantined")[1].split()[0]),
            "seconds_until_all_acknowledged": round(sent, 1),
        }
    finally:
        gateway.stop()
        orthanc.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def synthetic_uid(path: Path) -> str:
    """The SOP Instance UID of a file the benchmark wrote."""
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x00080018]).SOPInstanceUID)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--stream-gb", type=float, default=0.0)
    parser.add_argument("--full-disk-mb", type=int, default=0,
                        help="also a full-disk episode: the spool on a tmpfs of this size (root)")
    parser.add_argument("--skip-concurrent", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        result: dict[str, object] = {}
        if not args.skip_concurrent:
            result["concurrent"] = concurrent(Path(tmp), args.senders, args.instances, args.size)
        if args.stream_gb:
            result["streaming"] = streaming(Path(tmp), args.stream_gb)
        if args.full_disk_mb:
            result["full_disk"] = full_disk(Path(tmp), args.senders, args.instances, args.size, args.full_disk_mb)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
