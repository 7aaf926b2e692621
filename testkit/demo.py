"""The demo: modality -> gateway -> Orthanc, then what an authorized workstation gets back.

Run with ``./scripts/demo`` (or ``python -m testkit.demo``). Everything runs on loopback in
a temporary folder and is stopped at the end. The study has identity in its headers (a CT
series) and in its pixels (an ultrasound image with the patient's name, ID and birth date
burned in); the ultrasound goes through burned-in text redaction. A workstation whose
policy is ``restore`` then retrieves the study with dcmtk's ``movescu``. Pictures of the
ultrasound as sent, as Orthanc holds it and as the workstation got it go to ``--pictures``.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from gateway.original import dataset_bytes
from testkit import synthetic, testimages
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu

SHOWN = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
         "ReferringPhysicianName", "StudyDate", "StudyDescription", "StudyInstanceUID", "PatientIdentityRemoved",
         "BurnedInAnnotation")
WORKSTATION = "READING_1"


def _table(title: str, ds: pydicom.Dataset) -> None:
    print(f"\n{title}")
    for keyword in SHOWN:
        print(f"  {keyword:24} {str(ds.get(keyword, '(absent)'))[:60]}")
    print(f"  {'PatientComments':24} {str(ds.get('PatientComments', '(absent)'))[:60]}")


def _modality_study(folder: Path) -> tuple[list[Path], Path]:
    """Two CT series and one ultrasound image with burned-in identity, one study."""
    folder.mkdir()
    uid = None
    for number, n in ((1, 6), (2, 4)):
        for i, ds in enumerate(synthetic.ct_series(n, size=256, study_uid=uid, series_number=number)):
            uid = str(ds.StudyInstanceUID)
            ds.save_as(folder / f"ct{number}-{i}.dcm", enforce_file_format=True)
    us = testimages.make("us", seed=3).dataset
    us.StudyInstanceUID = uid
    us.SeriesNumber = 3
    us.save_as(folder / "us.dcm", enforce_file_format=True)
    return sorted(folder.glob("ct*.dcm")), folder / "us.dcm"


def _picture(ds: pydicom.Dataset, path: Path) -> None:
    Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8)).save(path)


def _movescu(port: int, gateway_port: int, study_uid: str, out: Path) -> str:
    out.mkdir()
    result = subprocess.run(
        ["movescu", "-S", "-aet", WORKSTATION, "-aec", "GATEWAY", "-aem", WORKSTATION, "--port", str(port),
         "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
         "127.0.0.1", str(gateway_port)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TCP_NODELAY="1"))
    return result.stdout + result.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, default=Path(".demo"),
                        help="where the ultrasound pictures go (default .demo/)")
    pictures = parser.parse_args().pictures
    pictures.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        root = Path(tmp)
        ws_port = free_port()
        orthanc = OrthancServer(root / "orthanc", gateway_port=free_port()).start()
        retrieval = {"workstations": [{"ae_title": WORKSTATION, "policy": "restore"}],
                     "destinations": [{"ae_title": WORKSTATION, "host": "127.0.0.1", "port": ws_port,
                                       "owners": [WORKSTATION], "allow_cleartext_originals": True}]}
        gateway = GatewayProcess(
            root / "gateway", orthanc, settle_seconds=1,
            profiles={"default": {"options": ["retain_longitudinal_modified_dates", "clean_descriptors"]}},
            routes=[{"name": "ultrasound", "match": {"modality": ["US"]}, "plugin": "none",
                     "redaction": {}},  # every detector
                    {"name": "ct", "plugin": "none"}],
            extra={"retrieval": retrieval}).start()
        try:
            cts, us = _modality_study(root / "modality")
            sent = [*cts, us]
            first = pydicom.dcmread(cts[0])
            _table(f"What the modality sends (one of {len(sent)} objects):", first)
            _picture(pydicom.dcmread(us), pictures / "1-as-sent.png")

            started = time.time()
            storescu(gateway.port, root / "modality")
            print(f"\nstorescu -> gateway: {len(sent)} objects acknowledged in {time.time() - started:.2f} s")
            deadline = time.time() + 120
            while len(orthanc.get("instances")) < len(sent) and time.time() < deadline:
                time.sleep(0.2)
            instances = orthanc.get("instances")
            print(f"Orthanc holds {len(instances)} objects in {len(orthanc.get('studies'))} study, "
                  f"{len(orthanc.get('series'))} series")
            held = [pydicom.dcmread(io.BytesIO(orthanc.get(f"instances/{i}/file"))) for i in instances]
            stored_ct = next(ds for ds in held if ds.Modality == "CT")
            stored_us = next(ds for ds in held if ds.Modality == "US")
            _table("What Orthanc holds (a CT object, protected):", stored_ct)
            _picture(stored_us, pictures / "2-in-orthanc.png")
            blanked = int((np.asarray(stored_us.pixel_array) != pydicom.dcmread(us).pixel_array).sum())
            print(f"  the ultrasound's burned-in text: {blanked} pixels blanked in Orthanc's copy")

            output = _movescu(ws_port, gateway.port, str(first.StudyInstanceUID), root / "workstation")
            received = sorted((root / "workstation").iterdir())
            originals = {dataset_bytes(p.read_bytes()) for p in sent}
            exact = sum(1 for p in received if dataset_bytes(p.read_bytes()) in originals)
            back = pydicom.dcmread(next(p for p in received if pydicom.dcmread(p).Modality == "CT"))
            _table(f"What workstation {WORKSTATION} (policy restore) gets with movescu:", back)
            us_back = next(p for p in received if pydicom.dcmread(p).Modality == "US")
            _picture(pydicom.dcmread(us_back), pictures / "3-at-the-workstation.png")
            print(f"\n{exact} of {len(sent)} objects came back byte for byte as the modality sent them "
                  "(each also passed the envelope's SHA-256 of the original).")
            if exact != len(sent):
                print(output)
            print(f"Pictures of the ultrasound: {pictures.resolve()}/1-as-sent.png, 2-in-orthanc.png, "
                  "3-at-the-workstation.png")
            print("\ngateway status:\n" + gateway.status())
            return 0 if exact == len(sent) else 1
        finally:
            gateway.stop()
            orthanc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
