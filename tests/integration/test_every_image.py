"""Compressed, colour and multi-frame objects, sent as modalities send them (dcmsend, each in
its own transfer syntax), through every pixel transform: protected in Orthanc, and back from
C-MOVE byte for byte.

One gateway, one Orthanc; each transform's route is picked by the modality's calling AE
title, and each route gets its own copy of the files (own UIDs, one study), sent in one
association and moved back in one.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from gateway import envelope
from gateway.original import dataset_bytes
from testkit.localstack import GatewayProcess, OrthancServer, free_port, run_cli
from tests.integration.conftest import wait_for
from tests.integration.test_retrieval import ENV

FILES = {
    "examples_ybr_color.dcm": "JPEG baseline, YBR_FULL_422 ultrasound, 30 frames",
    "JPEG-LL.dcm": "JPEG lossless, 16-bit",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "emri_small_RLE.dcm": "RLE, 10 frames",
    "examples_rgb_color.dcm": "native RGB ultrasound",
}
ROUTES = {"MOD_AE": "ae_aes", "MOD_NOISE": "noise_key", "MOD_COVER": "coverless"}


def _copies(folder: Path, study_uid: str) -> dict[str, Path]:
    """The test files as one study of one (fictional) patient, with UIDs of their own."""
    folder.mkdir(parents=True)
    out = {}
    for name in FILES:
        source = get_testdata_file(name)
        assert source is not None, f"pydicom test file {name} missing"
        ds = pydicom.dcmread(source)
        # What dcmsend changes in a file as it sends it, done here, so that "as sent" is this file:
        # it drops retired group lengths and trailing padding, sends sequences with explicit
        # lengths and encapsulated pixel data as OB (one file says OW).
        for elem in [e for e in ds if e.tag.element == 0 or e.tag == 0xFFFCFFFC]:
            del ds[elem.tag]
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds["PixelData"].VR = "OB"
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = False
                for item in elem.value:
                    item.is_undefined_length_sequence_item = False
        ds.PatientName, ds.PatientID = "DOE^JANE", "PID-4711-0815"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        out[str(ds.SOPInstanceUID)] = path
    return out


@pytest.fixture
def stack(tmp_path: Path, orthanc: OrthancServer) -> Iterator[tuple[GatewayProcess, int, dict[str, tuple[str, dict[str, Path]]]]]:
    port = free_port()
    retrieval = {"workstations": [{"ae_title": "WS_RESTORE", "policy": "restore"}],
                 "destinations": [{"ae_title": "WS_RESTORE", "host": "127.0.0.1", "port": port, "owners": ["WS_RESTORE"],
                                   "allow_cleartext_originals": True}]}
    routes = [{"name": plugin, "match": {"calling_ae": [ae]}, "plugin": plugin} for ae, plugin in ROUTES.items()]
    routes[2]["protected_syntax"] = "lossless"  # coverless: a native original is stored as JPEG 2000 lossless
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, senders=[{"ae_title": ae} for ae in ROUTES],
                             routes=routes, extra={"retrieval": retrieval}).start()
    sent: dict[str, tuple[str, dict[str, Path]]] = {}
    try:
        for ae, plugin in ROUTES.items():
            study_uid = generate_uid()
            sent[plugin] = (study_uid, _copies(tmp_path / plugin, study_uid))
            # as a modality sends: each file in its own transfer syntax, never decompressed
            result = subprocess.run(["dcmsend", "-aet", ae, "-aec", "GATEWAY", "+sd", "-dn", "-nh",
                                     "127.0.0.1", str(gateway.port), str(tmp_path / plugin)],
                                    capture_output=True, text=True, timeout=120, env=ENV)
            assert result.returncode == 0, result.stdout + result.stderr
        total = len(ROUTES) * len(FILES)
        wait_for(lambda: f"forwarded    {total}" in gateway.status(), timeout=180)
        yield gateway, port, sent
    finally:
        gateway.stop()


def test_every_kind_of_image_is_protected_in_orthanc_and_moved_back_exact(
        tmp_path: Path, orthanc: OrthancServer, stack) -> None:  # type: ignore[no-untyped-def]
    gateway, port, sent = stack
    originals = {uid: pydicom.dcmread(path) for _, files in sent.values() for uid, path in files.items()}
    by_value = {bytes(ds.PixelData): ds for ds in originals.values()}
    stored = [pydicom.dcmread(io.BytesIO(orthanc.get(f"instances/{i}/file"))) for i in orthanc.get("instances")]
    assert len(stored) == len(originals)
    seen: dict[str, int] = {}
    for ds in stored:
        assert ds.PatientIdentityRemoved == "YES" and "DOE^" not in str(ds.PatientName)
        plugin = [name for name in envelope.stage_names(ds) if name != "lossless"][-1]
        seen[plugin] = seen.get(plugin, 0) + 1
        if plugin == "coverless":  # pixels untouched: a compressed one in the syntax it came in,
            original = by_value.get(bytes(ds.PixelData))  # the native RGB one as JPEG 2000 lossless
            if original is None:
                assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
                assert any(o.Rows == ds.Rows and np.array_equal(o.pixel_array, ds.pixel_array)
                           for o in originals.values() if not o.file_meta.TransferSyntaxUID.is_compressed)
            else:
                assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
                assert ds.file_meta.TransferSyntaxUID.is_compressed
            continue
        assert bytes(ds.PixelData) not in by_value
        assert not ds.file_meta.TransferSyntaxUID.is_compressed  # Orthanc and viewers read it
        if plugin == "ae_aes":
            assert "ENCRYPTED" in ds.ImageType and ds.SamplesPerPixel == 1
        else:  # noise_key: the same image geometry, values unrelated to any original of that shape
            pixels = ds.pixel_array.astype(np.float64).ravel()
            same = [o for o in originals.values() if o.pixel_array.size == pixels.size]
            assert same and all(abs(np.corrcoef(pixels, o.pixel_array.astype(np.float64).ravel())[0, 1]) < 0.1
                                for o in same)
    assert seen == {plugin: len(FILES) for plugin in ROUTES.values()}

    for plugin, (study_uid, files) in sent.items():
        out = tmp_path / "moved" / plugin
        out.mkdir(parents=True)
        # the workstation accepts every transfer syntax: a JPEG original comes back as JPEG
        result = subprocess.run(
            ["movescu", "-S", "+xa", "-aet", "WS_RESTORE", "-aec", "GATEWAY", "-aem", "WS_RESTORE", "--port",
             str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
             "127.0.0.1", str(gateway.port)], capture_output=True, text=True, env=ENV, timeout=300)
        moved = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in out.iterdir()}
        assert set(moved) == set(files), f"{plugin}: {len(moved)} of {len(files)} moved\n{result.stderr[-2000:]}"
        for uid, path in files.items():
            assert dataset_bytes(moved[uid].read_bytes()) == dataset_bytes(path.read_bytes()), f"{plugin}: {path.name}"

    # a workstation that takes only uncompressed data gets each original decoded, after its restore
    # was verified: the same pixels, the same instance, and the audit says how many were decoded
    study_uid, files = sent["ae_aes"]
    out = tmp_path / "uncompressed"
    out.mkdir()
    result = subprocess.run(
        ["movescu", "-S", "-aet", "WS_RESTORE", "-aec", "GATEWAY", "-aem", "WS_RESTORE", "--port", str(port),
         "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
         "127.0.0.1", str(gateway.port)], capture_output=True, text=True, env=ENV, timeout=300)
    moved = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in out.iterdir()}
    assert set(moved) == set(files), result.stderr[-2000:]
    for uid, path in files.items():
        original, got = pydicom.dcmread(path), moved[uid]
        assert not got.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(got.pixel_array, original.pixel_array), path.name
        assert got.PatientName == original.PatientName
    compressed = sum(pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed for p in files.values())
    audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
    assert f"transcoded={compressed}" in audit
