"""Routing rules and destinations: one study's CT and SR series go different ways by two
rules; the CT route sends to the main Orthanc and, with a profile of its own, to a DICOM node."""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from testkit.localstack import GatewayProcess, OrthancServer, free_port, wait_port
from tests.conftest import encode, write_study
from tests.integration.conftest import HANDLED_IDENTITY, wait_for

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _sr_like(ct: Path, out: Path) -> pydicom.Dataset:
    """A Basic Text SR in the same study as ``ct``: the CT's identity, no pixels."""
    ds = copy.deepcopy(pydicom.dcmread(ct))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation", "PixelSpacing", "RescaleIntercept", "RescaleSlope",
                    "WindowCenter", "WindowWidth", "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation",
                    "SliceThickness", "ImageType", "FrameOfReferenceUID"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.SeriesDescription = "REPORT"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    out.write_bytes(encode(ds))
    return ds


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, tuple[int, Path]]]:
    """Two dcmtk storescp nodes: RESEARCH and ARCHIVE."""
    started = {}
    procs = []
    for ae in ("RESEARCH", "ARCHIVE"):
        port, folder = free_port(), tmp_path / ae.lower()
        folder.mkdir()
        procs.append(subprocess.Popen(["storescp", "-aet", ae, "-od", str(folder), str(port)],
                                      env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_port(port)
        started[ae] = (port, folder)
    yield started
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_ct_and_sr_of_one_study_go_to_their_destinations(tmp_path: Path, orthanc: OrthancServer,
                                                        nodes: dict[str, tuple[int, Path]]) -> None:
    destinations = {ae.lower(): {"kind": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": port}
                    for ae, (port, _) in nodes.items()}
    routes = [
        {"name": "reports", "match": {"modality": ["SR"]}, "destinations": [{"destination": "archive"}]},
        {"name": "ct-this-century", "level": "study",
         "match": {"called_ae": ["GATEWAY"], "source": ["127.0.0.0/8"],
                   "attributes": {"StudyDate": ["20000101-20991231"], "SeriesDescription": ["AXIAL*"],
                                  "SliceThickness": ["0.5-3.5"]}},
         "destinations": [{"destination": "orthanc"}, {"destination": "research", "profile": "research"}]},
    ]
    profiles = {"default": {"options": []}, "research": {"options": ["retain_patient_characteristics"]}}
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, routes=routes, profiles=profiles,
                             extra={"destinations": destinations, "listener": {
                                 "ae_title": "GATEWAY", "host": "127.0.0.1", "port": orthanc.gateway_port,
                                 "non_image": "protect"}}).start()
    try:
        files = write_study(tmp_path / "study", (2,), size=32)
        sr = _sr_like(files[0], tmp_path / "study" / "report.dcm")
        result = subprocess.run(["dcmsend", "-aet", "MODALITY", "-aec", "GATEWAY", "+sd", "127.0.0.1",
                                 str(gateway.port), str(tmp_path / "study")], check=False, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        research, archive = nodes["RESEARCH"][1], nodes["ARCHIVE"][1]
        wait_for(lambda: len(list(research.iterdir())) == 2 and len(list(archive.iterdir())) == 1, timeout=60)
        wait_for(lambda: len(orthanc.get("/instances")) == 2, timeout=30)
        wait_for(lambda: "research         delivered  2" in gateway.status())
        assert "archive          delivered  1" in gateway.status()
    finally:
        gateway.stop()
    (report,) = [pydicom.dcmread(p) for p in archive.iterdir()]
    assert report.Modality == "SR" and report.SOPInstanceUID != sr.SOPInstanceUID  # protected: pseudonymous UIDs
    to_research = [pydicom.dcmread(p) for p in research.iterdir()]
    assert {d.Modality for d in to_research} == {"CT"}
    assert all(d.PatientSex == "F" and d.PatientAge == "063Y" for d in to_research)  # research profile keeps them
    in_orthanc = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
    assert {t["Modality"] for t in in_orthanc} == {"CT"}
    assert all("PatientAge" not in t or t["PatientAge"] in ("", None) for t in in_orthanc)  # default profile drops it
    for path in [*research.iterdir(), *archive.iterdir()]:
        text = path.read_bytes().upper()
        assert not [v for v in HANDLED_IDENTITY if v.encode() in text], path.name
