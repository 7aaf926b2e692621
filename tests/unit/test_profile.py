"""Every attribute of PS3.15 Table E.1-1 gets the standard's action."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.deid.deidentify import Deidentifier
from gateway.deid.profile import Profile, ProfileError
from gateway.pseudonym import Pseudonymizer

SECRET = b"s" * 32
ROWS = json.loads(files("gateway").joinpath("data/ps3.15-table-e.1-1.json").read_text())
SAMPLE = {"DA": "20200102", "DT": "20200102030405", "TM": "030405", "UI": "1.2.3.4.5", "AS": "042Y",
          "IS": "7", "DS": "1.5", "US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 1.5, "FD": 1.5,
          "OB": b"\x01\x02", "OW": b"\x01\x02", "UN": b"\x01\x02", "AT": 0x00100010}


def _one(tag: int, vr: str) -> Dataset:
    ds = Dataset()
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "X1"
        ds.add_new(tag, vr, Sequence([item]))
    else:
        ds.add_new(tag, vr, SAMPLE.get(vr, "ORIGINAL VALUE"))
    ds.PatientID = "PID-1"  # the date shift is keyed per patient
    return ds


def _rows_with_vr():
    for row in ROWS:
        digits = row["tag"].strip("()").replace(",", "")
        if not all(c in "0123456789ABCDEFabcdef" for c in digits):
            continue
        tag = int(digits, 16)
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        yield row, tag, vr


def test_the_table_is_complete() -> None:
    assert len(ROWS) == 621
    assert sum(1 for _ in _rows_with_vr()) > 590


@pytest.mark.parametrize("options", [(), ("retain_longitudinal_modified_dates", "clean_descriptors",
                                           "retain_patient_characteristics", "retain_device_identity")])
def test_every_listed_attribute_gets_its_action(options: tuple[str, ...]) -> None:
    profile = Profile(frozenset(options))
    deid = Deidentifier(profile, Pseudonymizer(SECRET))
    checked = 0
    for row, tag, vr in _rows_with_vr():
        if tag == 0x00100020:
            continue  # Patient ID: checked on its own below
        action = profile.action(tag)
        assert action in {"X", "Z", "D", "U", "U*", "K", "C"}, row
        out = deid.run(_one(tag, vr)).dataset
        name = f"{row['name']} ({action})"
        if action == "X":
            assert tag not in out, name
        elif action == "Z":
            assert tag in out and (out[tag].value in ("", b"", None) or len(out[tag].value) == 0 or
                                   keyword_for_tag(tag) in ("PatientName", "AccessionNumber")), name
        elif action == "D":
            assert (tag in out and out[tag].value not in (None, "", b"")) or vr in ("OB", "OW", "UN", "UR"), name
            if vr not in ("SQ", "US", "SS", "UL", "SL", "FL", "FD", "AT"):
                assert out[tag].value != _one(tag, vr)[tag].value, name
        elif action in ("U", "U*") and vr == "UI":
            assert str(out[tag].value).startswith("2.25."), name
        elif action == "K":
            assert out[tag].value == _one(tag, vr)[tag].value, name
        elif action == "C" and vr == "DA":
            assert out[tag].value != "20200102" and len(out[tag].value) == 8, name
        checked += 1
    assert checked > 590


def test_patient_id_and_accession_become_keyed_pseudonyms() -> None:
    ds = Dataset()
    ds.PatientID = "MRN-12345"
    ds.AccessionNumber = "ACC-1"
    ds.PatientName = "DOE^JOHN"
    deid = Deidentifier(Profile(), Pseudonymizer(SECRET))
    a, b = deid.run(ds).dataset, deid.run(ds).dataset
    assert a.PatientID == b.PatientID != "MRN-12345"
    assert a.AccessionNumber == b.AccessionNumber != "ACC-1" and len(a.AccessionNumber) <= 16
    assert "DOE" not in str(a.PatientName)
    other = Deidentifier(Profile(), Pseudonymizer(b"t" * 32)).run(ds).dataset
    assert other.PatientID != a.PatientID


def test_modified_dates_shift_consistently_per_patient() -> None:
    deid = Deidentifier(Profile(frozenset({"retain_longitudinal_modified_dates"})), Pseudonymizer(SECRET))

    def shifted(pid: str, study: str, birth: str) -> tuple[str, str]:
        ds = Dataset()
        ds.PatientID, ds.StudyDate, ds.AcquisitionDateTime = pid, study, birth + "101010"
        out = deid.run(ds).dataset
        return out.StudyDate, out.AcquisitionDateTime

    a1, a2 = shifted("P1", "20240110", "20240101"), shifted("P1", "20240120", "20240111")
    from datetime import date
    d = lambda s: date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    assert (d(a2[0]) - d(a1[0])).days == 10  # intervals survive
    assert a1[0] != "20240110" and a1[1].endswith("101010")
    assert shifted("P2", "20240110", "20240101")[0] != a1[0]  # another patient, another shift


def test_options_keep_what_they_promise() -> None:
    ds = Dataset()
    ds.PatientSex, ds.PatientAge, ds.StationName = "F", "063Y", "CT-ROOM-3"
    ds.SeriesDescription = "Chest of DOE"
    ds.PatientName = "DOE^JANE"
    plain = Deidentifier(Profile(), Pseudonymizer(SECRET)).run(ds).dataset
    kept = Deidentifier(Profile(frozenset({"retain_patient_characteristics", "retain_device_identity",
                                           "clean_descriptors"})), Pseudonymizer(SECRET)).run(ds).dataset
    assert plain.PatientSex == "" and "PatientAge" not in plain and plain.get("StationName", "") == ""
    assert "SeriesDescription" not in plain
    assert kept.PatientSex == "F" and kept.PatientAge == "063Y" and kept.StationName == "CT-ROOM-3"
    assert kept.SeriesDescription == "Chest of *"


def test_uids_are_deterministic_and_structure_survives() -> None:
    deid = Deidentifier(Profile(), Pseudonymizer(SECRET))

    def one(sop: str) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", sop
        ref = Dataset()
        ref.ReferencedSOPInstanceUID = "1.2.3.4.1"
        ds.ReferencedImageSequence = Sequence([ref])
        return deid.run(ds).dataset

    a, b = one("1.2.3.4.1"), one("1.2.3.4.2")
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID  # references still resolve
    assert len(a.SOPInstanceUID) <= 64


def test_private_tags_go_unless_kept_and_identity_marks_are_set() -> None:
    ds = Dataset()
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "DOE")
    ds.private_block(0x0011, "SAFE", create=True).add_new(0x01, "LO", "kVp curve")
    out = Deidentifier(Profile(), Pseudonymizer(SECRET), keep_private=((0x0011, "SAFE"),)).run(ds).dataset
    assert not any(e.tag.group == 0x0009 for e in out)
    assert out.private_block(0x0011, "SAFE")[0x01].value == "kVp curve"
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_unknown_and_conflicting_options_are_refused() -> None:
    with pytest.raises(ProfileError, match="unknown"):
        Profile(frozenset({"retain_everything"}))
    with pytest.raises(ProfileError, match="exclude"):
        Profile(frozenset({"retain_longitudinal_modified_dates", "retain_longitudinal_full_dates"}))


def test_the_readme_table_of_options_is_the_code_s() -> None:
    """Every option the code knows is in the README's table with its CID 7050 code, and no other."""
    import re

    from gateway.deid.profile import OPTIONS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\s*\| `(\w+)` \| (\d{6}) \|", readme, flags=re.MULTILINE))
    assert rows == {name: code for name, (_column, code, _meaning) in OPTIONS.items()}


def test_describe_profile_prints_a_route_s_actions_and_options(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.keyring import Keyring

    Keyring.create(tmp_path / "keys.json")
    (tmp_path / "gw.yaml").write_text("""
senders: [{ae_title: CT1, host: 127.0.0.1}]
orthanc: {url: "http://127.0.0.1:8042", username: gw, password: pw}
keyring: keys.json
spool: {path: spool}
profiles: {graphics: {options: [clean_graphics], keep_private: [{group: 0x0029, creator: ACME NOTES 1}]}}
routes: [{name: ct, profile: graphics, plugin: none}]
""")
    run = [sys.executable, "-m", "gateway.cli", "describe-profile", "--config", str(tmp_path / "gw.yaml")]
    out = subprocess.run([*run, "--route", "ct"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[x] clean_graphics" in out.stdout and "[ ] clean_structured_content" in out.stdout
    assert "Overlay Description (60XX,0022): X -> C" in out.stdout
    assert "Content Sequence (0040,A730)" in out.stdout and "(0029,'ACME NOTES 1')" in out.stdout
    wrong = subprocess.run([*run, "--route", "mr"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "no route 'mr'" in wrong.stderr and "['ct']" in wrong.stderr
