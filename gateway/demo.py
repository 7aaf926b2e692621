"""The demo: modality -> gateway -> Orthanc, then what an authorized restore gives back.

Run with ``./scripts/demo`` (or ``python -m gateway.demo``). Everything runs on loopback
in a temporary folder and is stopped at the end.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import pydicom

from gateway import synthetic
from gateway.original import dataset_bytes
from gateway.localstack import GatewayProcess, OrthancServer, free_port, run_cli, storescu

SHOWN = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
         "ReferringPhysicianName", "StudyDate", "StudyDescription", "StudyInstanceUID", "PatientIdentityRemoved")


def _table(title: str, ds: pydicom.Dataset) -> None:
    print(f"\n{title}")
    for keyword in SHOWN:
        print(f"  {keyword:24} {str(ds.get(keyword, '(absent)'))[:60]}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        root = Path(tmp)
        orthanc = OrthancServer(root / "orthanc", gateway_port=free_port()).start()
        gateway = GatewayProcess(root / "gateway", orthanc, settle_seconds=1,
                                 profiles={"default": {"options": ["retain_longitudinal_modified_dates",
                                                                   "clean_descriptors"]}}).start()
        try:
            study = root / "modality"
            study.mkdir()
            uid = None
            for number, n in ((1, 6), (2, 4)):
                for i, ds in enumerate(synthetic.ct_series(n, size=256, study_uid=uid, series_number=number)):
                    uid = str(ds.StudyInstanceUID)
                    ds.save_as(study / f"{number}-{i}.dcm", enforce_file_format=True)
            first = pydicom.dcmread(sorted(study.iterdir())[0])
            _table("What the modality sends (one of 10 objects):", first)
            print(f"  {'PatientComments':24} {first.PatientComments[:60]}")

            started = time.time()
            storescu(gateway.port, study)
            print(f"\nstorescu -> gateway: 10 objects acknowledged in {time.time() - started:.2f} s")
            deadline = time.time() + 60
            while len(orthanc.get("instances")) < 10 and time.time() < deadline:
                time.sleep(0.2)
            instances = orthanc.get("instances")
            print(f"Orthanc holds {len(instances)} objects in {len(orthanc.get('studies'))} study, "
                  f"{len(orthanc.get('series'))} series")

            held = root / "held"
            held.mkdir()
            for i, instance in enumerate(instances):
                (held / f"{i}.dcm").write_bytes(orthanc.get(f"instances/{instance}/file"))
            stored = pydicom.dcmread(io.BytesIO((held / "0.dcm").read_bytes()))
            _table("What Orthanc holds (same object, protected):", stored)
            print(f"  {'PatientComments':24} {str(stored.get('PatientComments', '(absent)'))[:60]}")

            run_cli("restore", str(held), str(root / "restored"), "--keyring", str(gateway.keyring))
            originals = {dataset_bytes(p.read_bytes()) for p in study.iterdir()}
            restored = list((root / "restored").iterdir())
            exact = sum(1 for p in restored if dataset_bytes(p.read_bytes()) in originals)
            back = pydicom.dcmread(sorted(restored)[0])
            _table("What a restore with the gateway's keyring gives back:", back)
            print(f"\n{exact} of {len(restored)} restored objects are byte for byte what the modality sent "
                  "(each also passed the envelope's SHA-256 of the original).")
            print("\ngateway status:\n" + gateway.status())
        finally:
            gateway.stop()
            orthanc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
