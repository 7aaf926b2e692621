"""A series on a noise_key route: noisy in Orthanc, byte for byte back to a restore AE title."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from gateway.original import dataset_bytes
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import getscu, movescu


def test_noise_key_series_is_noisy_in_orthanc_and_exact_on_retrieval(tmp_path: Path, orthanc: OrthancServer) -> None:
    port = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval},
                             routes=[{"name": "noisy", "plugin": "noise_key", "plugin_settings": {"strength": 1.0}}])
    gateway.start()
    try:
        study = tmp_path / "study"
        files = write_study(study, (3,), size=128)
        head_ct = get_testdata_file("693_UNCI.dcm")  # real 512x512 CT, signed 14-bit, own study
        assert head_ct is not None, "install pydicom-data"
        files.append(Path(head_ct))
        storescu(gateway.port, [*files])
        wait_for(lambda: "forwarded    4" in gateway.status())
        originals = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in files}

        stored = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.get(f"instances/{i}/file")))
                  for i in orthanc.get("instances")]
        assert len(stored) == 4
        for ds in stored:  # no original shows through: pixels differ and are uncorrelated
            assert ds.PatientIdentityRemoved == "YES"
            pixels = ds.pixel_array.astype(float).ravel()
            for want in (pydicom.dcmread(p) for p in files):
                if want.Rows == ds.Rows:
                    assert ds.PixelData != want.PixelData
                    assert abs(np.corrcoef(pixels, want.pixel_array.astype(float).ravel())[0, 1]) < 0.1

        for study_uid in {str(pydicom.dcmread(p).StudyInstanceUID) for p in files}:
            movescu(gateway, tmp_path / "moved", "WS_RESTORE", port, "WS_RESTORE", study_uid)
            getscu(gateway, tmp_path / "got", "WS_RESTORE", study_uid)
        moved = sorted((tmp_path / "moved").iterdir())
        got = sorted((tmp_path / "got").iterdir())
        assert len(moved) == len(got) == 4
        for f in moved + got:
            ds = pydicom.dcmread(f)
            original = originals[str(ds.SOPInstanceUID)]
            assert _elements(ds) == _elements(pydicom.dcmread(original))  # pixel data included
            if f in moved and original.parent == study:
                # storescp keeps the encoding it was sent, so the bytes are the original's
                # (the head CT's file has group lengths that storescu drops when sending)
                assert dataset_bytes(f.read_bytes()) == dataset_bytes(original.read_bytes())
    finally:
        gateway.stop()


def _elements(ds: pydicom.Dataset) -> list[pydicom.DataElement]:
    """Every element but the retired group lengths (senders may drop or add them)."""
    return [e for e in ds if e.tag.element != 0]
