"""Protect then restore gives back the original bytes, on every file pydicom ships."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files

from gateway import envelope
from gateway.keyring import Keyring
from gateway.protect import protect_series
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from tests.conftest import encode, write_study


def _readable() -> list[Path]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(set(get_testdata_files("*")) | set(get_charset_files("*.dcm"))):  # every character set too
            try:
                ds = pydicom.dcmread(f, force=True)  # files without preamble or meta too
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID  # noqa: B018
            except Exception:  # noqa: BLE001 - not a storable object: nothing to round-trip
                continue
            out.append(Path(f))
    return out


FILES = _readable()


def test_many_real_files_are_covered() -> None:
    assert len(FILES) >= 130


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_restore_is_byte_exact(path: Path, keyring: Keyring) -> None:
    raw = path.read_bytes()
    # No real file is held back: a patient "Test^S R" beside the coding scheme "TEST", an
    # institution "OFFIS" beside the manufacturer "OFFIS" are not identity left behind.
    [out] = protect_series([raw], RouteSpec(), keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    assert protected.PatientIdentityRemoved == "YES" and envelope.has_envelope(protected)
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


def test_a_multi_series_study_keeps_its_structure(tmp_path: Path, keyring: Keyring) -> None:
    paths = write_study(tmp_path, (3, 2))
    keys = MemoryDataKeys()
    route = RouteSpec(options=frozenset({"retain_longitudinal_modified_dates"}))
    first = protect_series([p.read_bytes() for p in paths[:3]], route, keyring, keys)
    second = protect_series([p.read_bytes() for p in paths[3:]], route, keyring, keys)
    assert len({o.study_uid for o in first + second}) == 1
    assert len({o.series_uid for o in first}) == 1 and first[0].series_uid != second[0].series_uid
    for o, p in zip(first + second, paths, strict=True):
        assert b"DOE^JANE" not in o.data and b"PID-4711" not in o.data and b"Saint Example" not in o.data
        assert restore_series([o.data], keyring)[0].data == p.read_bytes()


def test_rotation_keeps_old_envelopes_open(tmp_path: Path, keyring: Keyring) -> None:
    [path] = write_study(tmp_path, (1,))
    [before] = protect_series([path.read_bytes()], RouteSpec(), keyring, MemoryDataKeys())
    keyring.rotate()
    reloaded = Keyring.load(keyring.path)
    [after] = protect_series([path.read_bytes()], RouteSpec(), reloaded, MemoryDataKeys())
    assert _key_id(before.data) == "kek-0001" and _key_id(after.data) == "kek-0002"
    assert restore_series([before.data, after.data], reloaded)[0].data == path.read_bytes()
    assert all(r.data == path.read_bytes() for r in restore_series([before.data, after.data], reloaded))


def test_tampering_and_wrong_keys_fail_loudly(tmp_path: Path, keyring: Keyring) -> None:
    [path] = write_study(tmp_path, (1,))
    [out] = protect_series([path.read_bytes()], RouteSpec(), keyring, MemoryDataKeys())
    ds = pydicom.dcmread(io.BytesIO(out.data))
    ds.PixelData = b"\x00" * len(ds.PixelData)  # someone edited the pixels in the PACS
    [r] = restore_series([encode(ds)], keyring)
    assert r.data is None and "digest" in (r.error or "")

    ds = pydicom.dcmread(io.BytesIO(out.data))
    ds.SOPInstanceUID = "2.25.1"  # the envelope moved to another instance
    assert "authenticate" in (restore_series([encode(ds)], keyring)[0].error or "")

    stranger = Keyring.create(tmp_path / "other.json")
    assert restore_series([out.data], stranger)[0].data is None


def _key_id(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data))
    return str(ds.private_block(envelope.GROUP, envelope.CREATOR)[0x02].value)
