"""C-MOVE of a CT study through the gateway with restore, next to C-MOVE straight from Orthanc.

Prints one JSON object. Same run, same machine, same study (default 300 x 512x512 16-bit
CT). The destination is dcmtk's movescu acting as its own storage SCP (TCP_NODELAY=1, receive
PDU 128 KiB).
Orthanc's own C-MOVE sends the protected objects it holds; the gateway fetches them over
REST, restores and verifies each one, and sends the originals.

    python bench/retrieve.py [--instances 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom

from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu

ENV = dict(os.environ, TCP_NODELAY="1")
# The workstation's receive PDU size, the same for both runs. dcmtk's default (16 KiB) cuts a
# 512 KiB object into 32 PDUs, which costs a Python sender far more than Orthanc.
MAX_PDU = 131072


def movescu(calling: str, called: str, port: int, dest_port: int, study_uid: str, out: Path) -> float:
    out.mkdir(parents=True)
    started = time.perf_counter()
    result = subprocess.run(["movescu", "-S", "--max-pdu", str(MAX_PDU), "-aet", calling, "-aec", called, "-aem", calling, "--port", str(dest_port),
                    "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                    "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV, timeout=1800)
    if result.returncode:
        raise RuntimeError(f"movescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=300)
    n = parser.parse_args().instances
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-") as tmp:
        root = Path(tmp)
        study = root / "study"
        study.mkdir()
        for i, ds in enumerate(synthetic.ct_series(n, size=512)):
            ds.save_as(study / f"{i:04d}.dcm", enforce_file_format=True)
        original_uid = str(pydicom.dcmread(study / "0000.dcm").StudyInstanceUID)
        ws_port, orthanc_ws_port = free_port(), free_port()
        orthanc = OrthancServer(root / "orthanc", gateway_port=free_port(), extra_modalities={
            "bench": {"AET": "WS_BENCH", "Host": "127.0.0.1", "Port": orthanc_ws_port, "AllowMove": True}}).start()
        retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                     "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": ws_port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
        gateway = GatewayProcess(root / "gateway", orthanc, settle_seconds=1, extra={"retrieval": retrieval}).start()
        try:
            storescu(gateway.port, study)
            deadline = time.time() + 1200
            while f"forwarded    {n}" not in gateway.status():
                if time.time() > deadline:
                    raise TimeoutError("study not forwarded in time")
                time.sleep(0.5)
            protected_uid = orthanc.get(f"studies/{orthanc.get('studies')[0]}")["MainDicomTags"]["StudyInstanceUID"]
            direct = movescu("WS_BENCH", "ORTHANC", orthanc.dicom_port, orthanc_ws_port, protected_uid, root / "direct")
            through = movescu("WS_RESTORE", "GATEWAY", gateway.port, ws_port, original_uid, root / "restored")
            received = len(list((root / "restored").iterdir()))
        finally:
            gateway.stop()
            orthanc.stop()
    print(json.dumps({
        "instances": n,
        "orthanc_cmove_seconds": round(direct, 2),
        "gateway_cmove_restore_seconds": round(through, 2),
        "ratio": round(through / direct, 2),
        "restored_instances_received": received,
        "gateway_instances_per_s": round(n / through, 1),
        "workstation_max_pdu": MAX_PDU,
    }, indent=2))


if __name__ == "__main__":
    main()
