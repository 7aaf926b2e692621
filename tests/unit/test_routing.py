"""Routing rules: header attributes with wildcards and ranges, called AE title, source,
destinations checked by the validator, a destination's own profile and transform."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway.config import Config, Match
from gateway.delivery import study_still_receiving
from gateway.route_spec import route_spec
from gateway.spool import Spool, origin
from tests.conftest import encode

BASE: dict[str, Any] = {
    "senders": [{"ae_title": "CT1"}], "keyring": "k.json", "spool": {"path": "s"},
    "orthanc": {"url": "http://127.0.0.1:1", "username": "u", "password": "p"},
    "profiles": {"default": {"options": []}, "research": {"options": ["retain_patient_characteristics"]}},
    "destinations": {"pacs2": {"kind": "orthanc", "url": "http://127.0.0.1:2", "username": "u", "password": "p"},
                     "ai": {"kind": "dicom", "ae_title": "AI_NODE", "host": "10.0.0.9", "port": 104}},
}


def header(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


CT = header(Modality="CT", StudyDate="20240517", SeriesDescription="AXIAL 3MM", SliceThickness="3.0",
            BodyPartExamined="CHEST", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])


@pytest.mark.parametrize(("attributes", "accepted"), [
    ({"SeriesDescription": ["AXIAL*"]}, True),
    ({"SeriesDescription": ["axial*"]}, False),  # LO is case-sensitive, as in C-FIND
    ({"SeriesDescription": ["COR*", "AX?AL 3MM"]}, True),  # any pattern of the list
    ({"StudyDate": ["20240101-20241231"]}, True),
    ({"StudyDate": ["-20231231"]}, False),
    ({"StudyDate": ["20240517-"]}, True),
    ({"SliceThickness": ["0.5-2.5"]}, False),
    ({"SliceThickness": ["2.5-3"]}, True),
    ({"SliceThickness": ["-3.5"]}, True),
    ({"ImageType": ["*PRIMARY*"]}, True),  # multi-valued: the whole value
    ({"PatientSex": ["*"]}, True),  # absent: only universal matching takes it
    ({"PatientSex": ["F"]}, False),
    ({"Modality": ["CT"], "BodyPartExamined": ["HEAD"]}, False),  # every attribute must match
])
def test_header_attribute_rules(attributes: dict[str, list[str]], accepted: bool) -> None:
    assert Match(attributes=attributes).accepts("CT1", "CT", "1.2", header=CT) is accepted


def test_called_ae_source_and_calling_ae() -> None:
    match = Match(calling_ae=["CT1"], called_ae=["GW_RESEARCH"], source=["10.1.0.0/16", "192.168.5.7"])
    assert match.accepts("CT1", "CT", "1.2", called_ae="GW_RESEARCH", address="10.1.44.2")
    assert match.accepts("CT1", "CT", "1.2", called_ae="GW_RESEARCH", address="192.168.5.7")
    assert not match.accepts("CT1", "CT", "1.2", called_ae="GATEWAY", address="10.1.44.2")
    assert not match.accepts("CT1", "CT", "1.2", called_ae="GW_RESEARCH", address="10.2.0.1")
    assert not match.accepts("CT1", "CT", "1.2", called_ae="GW_RESEARCH", address="not-an-address")
    assert not match.accepts("MR1", "CT", "1.2", called_ae="GW_RESEARCH", address="10.1.44.2")


def test_first_matching_route_wins_and_header_free_rules_still_work() -> None:
    config = Config.model_validate({**BASE, "routes": [
        {"name": "chest", "match": {"attributes": {"BodyPartExamined": ["CHEST"]}}, "destinations": [
            {"destination": "orthanc"}, {"destination": "ai", "profile": "research", "plugin": "noise_key",
                                         "plugin_settings": {"strength": 0.5}}]},
        {"name": "rest", "destinations": [{"destination": "pacs2"}]}]})
    assert config.route_for("CT1", "CT", "1.2", header=CT).name == "chest"
    assert config.route_for("CT1", "CT", "1.2", header=header(BodyPartExamined="HEAD")).name == "rest"
    assert config.route_for("CT1", "CT", "1.2").name == "rest"  # no header: attribute rules do not match
    main, ai = route_spec(config, "chest"), route_spec(config, "chest", "ai")
    assert (main.plugin, main.options) == ("none", frozenset())
    assert (ai.plugin, ai.plugin_settings, ai.options) == ("noise_key", {"strength": 0.5},
                                                           frozenset({"retain_patient_characteristics"}))


@pytest.mark.parametrize(("routes", "message"), [
    ([{"name": "r", "destinations": [{"destination": "nowhere"}]}],
     "routes[0].destinations[0]: no destination named 'nowhere'; defined: ['ai', 'orthanc', 'pacs2']"),
    ([{"name": "r", "destinations": [{"destination": "ai", "profile": "gone"}]}],
     "routes[0].destinations[0].profile: no profile named 'gone'"),
    ([{"name": "r", "destinations": []}], "a route needs at least one destination"),
    ([{"name": "r", "destinations": [{"destination": "ai"}, {"destination": "ai"}]}], "named twice"),
    ([{"name": "r", "match": {"attributes": {"SeriesDescriptionn": ["*"]}}}], "not DICOM attribute keywords"),
    ([{"name": "r", "match": {"source": ["10.0.0.300"]}}], "10.0.0.300"),
])
def test_the_validator_names_what_is_wrong(routes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        Config.model_validate({**BASE, "routes": routes})


def test_the_association_travels_in_the_file_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.accept(b"x", "CT1", "2.25.1", "2.25.10", "CT", "1.2", called_ae="GW_RESEARCH", address="10.1.44.2")
    (item,) = spool.received("2.25.1")
    assert origin(item.path) == ("CT1", "GW_RESEARCH", "10.1.44.2")
    assert origin(Path("abc.4354.dcm")) == ("CT", "", "")  # taken in before this was recorded
    spool.close()


def test_a_study_route_waits_for_every_series_of_the_study(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for series, study in (("2.25.1", "1.2.3"), ("2.25.2", "1.2.3"), ("2.25.3", "9.9.9")):
        spool.accept(encode_header(study), "CT1", series, series + "0", "CT", "1.2")
    assert study_still_receiving(spool, "2.25.1", "1.2.3", settle_seconds=60)  # 2.25.2 is still arriving
    assert not study_still_receiving(spool, "2.25.3", "9.9.9", settle_seconds=60)  # alone in its study
    time.sleep(0.2)
    assert not study_still_receiving(spool, "2.25.1", "1.2.3", settle_seconds=0.1)  # all settled
    spool.close()


def encode_header(study_uid: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = header(StudyInstanceUID=study_uid, SOPClassUID="1.2", SOPInstanceUID=generate_uid(), Modality="CT")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return encode(ds)
