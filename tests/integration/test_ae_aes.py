"""A series sent through an ae_aes route is ciphertext in Orthanc and comes back exact."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import _assert_exact, getscu, movescu


@pytest.fixture
def stack(tmp_path: Path, orthanc: OrthancServer) -> Iterator[tuple[GatewayProcess, int]]:
    port = free_port()
    retrieval = {
        "workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
        "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}],
    }
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval},
                             routes=[{"name": "ae", "plugin": "ae_aes", "plugin_settings": {"mode": "encrypted"}}])
    gateway.start()
    files = write_study(tmp_path / "study", (4,), size=128)
    storescu(gateway.port, tmp_path / "study")
    wait_for(lambda: "forwarded    4" in gateway.status(), timeout=120)
    gateway.files = files  # type: ignore[attr-defined]
    yield gateway, port
    gateway.stop()


def test_orthanc_holds_ciphertext_and_restore_titles_get_the_originals(
        tmp_path: Path, orthanc: OrthancServer, stack: tuple[GatewayProcess, int]) -> None:
    gateway, port = stack
    originals = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in gateway.files}  # type: ignore[attr-defined]
    original_pixels = [pydicom.dcmread(p).pixel_array.astype(np.float64).ravel() for p in originals.values()]

    stored = [pydicom.dcmread(io.BytesIO(orthanc.get(f"instances/{i}/file"))) for i in orthanc.get("instances")]
    assert len(stored) == 4
    for ds in stored:
        assert "ENCRYPTED" in ds.ImageType and ds.Rows < 128  # ciphertext, smaller than the image
        pixels = ds.pixel_array.astype(np.float64).ravel()  # Orthanc keeps a decodable image
        counts = np.bincount(np.frombuffer(ds.PixelData, np.uint8), minlength=256)
        assert counts.min() > 0 and counts.max() < 3 * counts.mean()  # bytes look uniform
        for original in original_pixels:  # against the image's middle rows (its top rows are air)
            n = min(len(pixels), len(original))
            middle = original[(len(original) - n) // 2 :][:n]
            assert abs(np.corrcoef(pixels[:n], middle)[0, 1]) < 0.1
    # Orthanc's own rendering shows noise, not the phantom
    png = orthanc.get(f"instances/{orthanc.get('instances')[0]}/preview")
    assert isinstance(png, (bytes, bytearray)) and len(png) > 0

    study_uid = str(pydicom.dcmread(gateway.files[0]).StudyInstanceUID)  # type: ignore[attr-defined]
    movescu(gateway, tmp_path / "moved", "WS_RESTORE", port, "WS_RESTORE", study_uid)
    _assert_exact(tmp_path / "moved", originals)
    getscu(gateway, tmp_path / "got", "WS_RESTORE", study_uid)
    _assert_exact(tmp_path / "got", originals, same_bytes=False)
