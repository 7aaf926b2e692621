"""Series on a coverless route: untouched pixels and no identity in Orthanc; the identity
travels as cell numbers of the images' hash table and comes back, demapped and checked, to a restore workstation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from gateway.original import dataset_bytes
from testkit import synthetic
from testkit.localstack import GatewayProcess, OrthancServer, free_port, storescu
from tests.conftest import encode
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import movescu

IDENTITY = synthetic.Identity()
PHI = [IDENTITY.patient_name, "DOE", "JANE", IDENTITY.patient_id, IDENTITY.birth_date, IDENTITY.accession,
       IDENTITY.institution, IDENTITY.referring, "HOUSE", "CUDDY", IDENTITY.address, IDENTITY.study_date]
SLICES = 30
LONG = 50  # more than a retrieval batch (32), and enough for the plugin's worker pool to run


@pytest.fixture
def stack(tmp_path: Path, orthanc: OrthancServer) -> Iterator[tuple[GatewayProcess, int, list[Path]]]:
    port = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"], "allow_cleartext_originals": True}]}
    route = {"name": "coverless", "plugin": "coverless", "plugin_settings": {"fallback": "envelope", "workers": 2}}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, routes=[route], extra={"retrieval": retrieval}).start()
    folder = tmp_path / "series"
    folder.mkdir()
    files = []
    first = synthetic.ct_series(SLICES, 128, seed=11)
    second = synthetic.ct_series(LONG, 64, seed=12, study_uid=str(first[0].StudyInstanceUID), series_number=2)
    for i, ds in enumerate(first + second):
        files.append(folder / f"{i:03d}.dcm")
        files[-1].write_bytes(encode(ds))
    storescu(gateway.port, folder)
    wait_for(lambda: f"forwarded    {SLICES + LONG}" in gateway.status(), timeout=240)
    yield gateway, port, files
    gateway.stop()


def test_coverless_route_keeps_pixels_hides_identity_and_restores_exactly(
        tmp_path: Path, orthanc: OrthancServer, stack: tuple[GatewayProcess, int, list[Path]]) -> None:
    gateway, port, files = stack
    sent = {(int(ds.SeriesNumber), int(ds.InstanceNumber)): ds for ds in (pydicom.dcmread(f) for f in files)}
    held = orthanc.get("instances")
    assert len(held) == SLICES + LONG
    for instance in held:
        raw = orthanc.get(f"instances/{instance}/file")
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
        assert stored.PixelData == sent[(int(stored.SeriesNumber), int(stored.InstanceNumber))].PixelData  # untouched
        tags = str(orthanc.get(f"instances/{instance}/tags")).upper()
        for value in PHI:
            assert value.upper() not in tags and value.encode() not in raw, "identity in Orthanc"

    study_uid = str(sent[(1, 1)].StudyInstanceUID)
    movescu(gateway, tmp_path / "back", "WS_RESTORE", port, "WS_RESTORE", study_uid)
    back = sorted((tmp_path / "back").iterdir())
    assert len(back) == SLICES + LONG
    originals = {str(ds.SOPInstanceUID): f for f, ds in zip(files, (pydicom.dcmread(f) for f in files), strict=True)}
    for f in back:
        got = pydicom.dcmread(f)
        assert dataset_bytes(f.read_bytes()) == dataset_bytes(originals[str(got.SOPInstanceUID)].read_bytes())

    log = gateway.log_path.read_text()
    carried = re.findall(r"coverless: identity demapped and verified \((\d+) values from the table", log)
    assert len(carried) == 2 and all(int(n) >= 1 for n in carried), "a restore did not demap the identity"
    assert "not demapped" not in log  # each series was restored whole, the long one too
    assert f"coverless: {LONG} images ordered by geometry" in log  # the long series went through the pool
    assert not any(value in log for value in PHI), "identity in the gateway's log"
