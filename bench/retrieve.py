"""C-MOVE (and C-GET) of a CT study through the gateway with restore, next to the same
retrieval straight from Orthanc.

Prints one JSON object. Same run, same machine, same study (default 300 x 512x512 16-bit
CT). The C-MOVE destination is dcmtk's movescu acting as its own storage SCP
(TCP_NODELAY=1, receive PDU 128 KiB); the C-GET caller is dcmtk's getscu, same PDU size.
Orthanc's own retrievals send the protected objects it holds; the gateway fetches them over
REST, restores and verifies each one, and sends the originals.

The gateway's first C-MOVE after it started (``gateway_cmove_cold_seconds``) also starts its
restore workers; the ratio is taken from the second, as a running gateway serves. CPU
seconds are each side's processes (the gateway with its workers; Orthanc, which also serves
the gateway's downloads) during the C-MOVE. movescu, as its own storage SCP, polls for the
sub-association once a second until it arrives, so each C-MOVE may include up to 1 s of
waiting on either side; C-GET has no sub-association.

    python -m bench.retrieve [--instances 300] [--no-get] [--profile FILE]

``--profile FILE`` records the gateway process (and its restore workers) with py-spy during
its (second) C-MOVE and writes py-spy's raw collapsed stacks to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu

ENV = dict(os.environ, TCP_NODELAY="1")
# The workstation's receive PDU size, the same for both runs. dcmtk's default (16 KiB) cuts a
# 512 KiB object into 32 PDUs, which costs a Python sender far more than Orthanc.
MAX_PDU = 131072


def retrieve(tool: str, calling: str, called: str, port: int, study_uid: str, out: Path,
             dest_port: int | None = None) -> float:
    """Seconds one dcmtk ``movescu`` or ``getscu`` takes to retrieve the study into ``out``."""
    out.mkdir(parents=True)
    move = ["-aem", calling, "--port", str(dest_port)] if dest_port is not None else []
    started = time.perf_counter()
    result = subprocess.run([tool, "-S", "--max-pdu", str(MAX_PDU), "-aet", calling, "-aec", called, *move,
                             "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                             "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV, timeout=1800)
    if result.returncode:
        raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` and every process below it (Linux /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += sum(cpu_seconds(int(child)) for child in (task / "children").read_text().split())
    except OSError:  # it ended meanwhile
        pass
    return total


def timed(pids: dict[str, int], run: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """``run``'s seconds and the CPU seconds each of ``pids`` (with its children) used meanwhile.
    A process that ends during ``run`` takes its CPU time with it (workers live on here)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds = run()
    return seconds, {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()}


def profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` and its children until it is sent SIGINT."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--subprocesses", "--rate", "200",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--no-get", action="store_true", help="skip the C-GET comparison")
    parser.add_argument("--profile", type=Path, help="write py-spy's collapsed stacks of the gateway's C-MOVE here")
    args = parser.parse_args()
    n = args.instances
    figures: dict[str, object] = {"instances": n}
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-") as tmp:
        root = Path(tmp)
        study = root / "study"
        study.mkdir()
        for i, ds in enumerate(synthetic.ct_series(n, size=512)):
            ds.save_as(study / f"{i:04d}.dcm", enforce_file_format=True)
        original_uid = str(pydicom.dcmread(study / "0000.dcm").StudyInstanceUID)
        ws_port, orthanc_ws_port = free_port(), free_port()
        orthanc = OrthancServer(root / "orthanc", gateway_port=free_port(), extra_modalities={
            "bench": {"AET": "WS_BENCH", "Host": "127.0.0.1", "Port": orthanc_ws_port, "AllowMove": True,
                      "AllowGet": True}}).start()
        retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                     "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": ws_port,
                                       "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
        gateway = GatewayProcess(root / "gateway", orthanc, settle_seconds=1, extra={"retrieval": retrieval}).start()
        try:
            storescu(gateway.port, study)
            deadline = time.time() + 1200
            while f"forwarded    {n}" not in gateway.status():
                if time.time() > deadline:
                    raise TimeoutError("study not forwarded in time")
                time.sleep(0.5)
            protected_uid = orthanc.get(f"studies/{orthanc.get('studies')[0]}")["MainDicomTags"]["StudyInstanceUID"]
            assert gateway.process is not None and orthanc.process is not None
            pids = {"gateway": gateway.process.pid, "orthanc": orthanc.process.pid}
            direct, direct_cpu = timed(pids, lambda: retrieve(
                "movescu", "WS_BENCH", "ORTHANC", orthanc.dicom_port, protected_uid, root / "direct", orthanc_ws_port))
            cold = retrieve("movescu", "WS_RESTORE", "GATEWAY", gateway.port, original_uid, root / "cold", ws_port)
            spy = profiler(gateway.process.pid, args.profile) if args.profile else None
            through, through_cpu = timed(pids, lambda: retrieve(
                "movescu", "WS_RESTORE", "GATEWAY", gateway.port, original_uid, root / "restored", ws_port))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            figures.update({
                "orthanc_cmove_seconds": round(direct, 2),
                "gateway_cmove_restore_seconds": round(through, 2),
                "ratio": round(through / direct, 2),
                "gateway_cmove_cold_seconds": round(cold, 2),
                "orthanc_cmove_cpu_seconds": direct_cpu,
                "gateway_cmove_cpu_seconds": through_cpu,
                "restored_instances_received": len(list((root / "restored").iterdir())),
                "restored_identical": _identical(study, root / "restored"),
                "gateway_instances_per_s": round(n / through, 1),
            })
            if not args.no_get:
                get_direct, get_direct_cpu = timed(pids, lambda: retrieve(
                    "getscu", "WS_BENCH", "ORTHANC", orthanc.dicom_port, protected_uid, root / "get-direct"))
                get_through, get_through_cpu = timed(pids, lambda: retrieve(
                    "getscu", "WS_RESTORE", "GATEWAY", gateway.port, original_uid, root / "get-restored"))
                figures.update({
                    "orthanc_cget_seconds": round(get_direct, 2),
                    "gateway_cget_restore_seconds": round(get_through, 2),
                    "cget_ratio": round(get_through / get_direct, 2),
                    "orthanc_cget_cpu_seconds": get_direct_cpu,
                    "gateway_cget_cpu_seconds": get_through_cpu,
                    "cget_restored_instances_received": len(list((root / "get-restored").iterdir())),
                })
        finally:
            gateway.stop()
            orthanc.stop()
    figures["workstation_max_pdu"] = MAX_PDU
    print(json.dumps(figures, indent=2))


def _identical(sent: Path, received: Path) -> bool:
    """Every received file's data set is the sent original's (dcmtk writes its own file meta)."""
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent.iterdir()}
    for path in received.iterdir():
        got = pydicom.dcmread(path)
        want = pydicom.dcmread(originals[str(got.SOPInstanceUID)])
        if got != want:
            return False
    return bool(originals)


if __name__ == "__main__":
    main()
