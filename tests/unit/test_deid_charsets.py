"""Identity in every character set and container is removed or caught, and real series
are not held back for values that are no identity."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway import gate
from gateway.keyring import Keyring
from gateway.protect import Quarantine, protect_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from testkit.planted import NAMES, PRIVATE_CREATOR, Planted, planted_series
from tests.conftest import encode

REAL = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests"
_ESCAPE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")


def _protect(series: list[Dataset], keyring: Keyring, route: RouteSpec = RouteSpec()) -> list[Dataset]:
    outs = protect_series([encode(ds) for ds in series], route, keyring, MemoryDataKeys())
    return [pydicom.dcmread(io.BytesIO(o.data)) for o in outs]


def _text(ds: Dataset) -> str:
    """Every string value of ``ds`` (private and nested ones too), as the gate's words."""
    return gate.words(" ".join(str(e.value) for e in ds.iterall() if e.VR in gate._STRING_VRS))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("planted", NAMES, ids=lambda p: p.label)
def test_a_name_in_every_character_set_is_gone_from_every_place(planted: Planted, keyring: Keyring) -> None:
    outs = protect_series([encode(ds) for ds in planted_series(planted)], RouteSpec(), keyring, MemoryDataKeys())
    codecs = {*convert_encodings(list(planted.charset)), "utf-8"}
    for out in outs:
        ds = pydicom.dcmread(io.BytesIO(out.data))
        assert ds.SpecificCharacterSet == (list(planted.charset) if len(planted.charset) > 1 else planted.charset[0])
        words = _text(ds)
        for part in planted.parts:
            assert gate.words(part) not in words, f"{planted.label}: a name part is left in a decoded value"
            for codec in codecs:
                try:
                    raw = _ESCAPE.sub(b"", part.encode(codec))
                except UnicodeError:
                    continue
                assert raw not in out.data, f"{planted.label}: a name part is left in the bytes ({codec})"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("planted", NAMES, ids=lambda p: p.label)
def test_a_name_in_retained_free_text_is_caught_by_the_gate(planted: Planted, keyring: Keyring) -> None:
    with pytest.raises(Quarantine) as caught:
        _protect(planted_series(planted, retained=True), keyring)
    message = str(caught.value)
    assert "(0028,1055) WindowCenterWidthExplanation: PatientName" in message
    assert not any(part in message for part in planted.parts)  # where and what kind, never the value


@pytest.mark.filterwarnings("ignore")
def test_a_private_block_kept_by_a_rule_is_still_searched(keyring: Keyring) -> None:
    route = RouteSpec(keep_private=((0x0029, PRIVATE_CREATOR),))
    with pytest.raises(Quarantine, match=r"\(0029,1010\): PatientName"):
        _protect(planted_series(NAMES[7]), keyring, route)  # Japanese, ISO 2022 IR 87


def test_words_match_scripts_without_spaces_as_runs_after_normalisation() -> None:
    assert gate.words("山田太郎の所見") == " 山 田 太 郎 の 所 見 "
    assert gate.words("ﾔﾏﾀﾞ") == gate.words("ヤマダ")  # NFKC: half-width kana
    assert gate.words("STRAßE") == gate.words("strasse")  # case folding
    assert gate.words("מֹשֶׁה") == gate.words("משה")  # points dropped
    needles = gate.Needles(set(), {"山田^太郎"})
    assert needles.match("所見：山田太郎様", "LO") and needles.match("山田さん", "LT")
    assert needles.match("山田", "CS") is None  # a name part is no coded value
    assert needles.match("太", "LT") is None  # one character is too short to mean a name


def test_coded_values_and_uids_hit_only_when_equal() -> None:
    needles = gate.Needles({"1.2.3.4", "PID-4711"}, {"KNEE", "DOE^JOHN"})
    assert needles.match("KNEE", "CS") is None  # could be a defined term
    assert needles.match("DOE JOHN", "CS") is None and needles.match("DOE^JOHN", "CS")
    assert needles.match("PID-4711", "CS")
    assert needles.match("1.2.3.4.5", "UI") is None and needles.match("1.2.3.4", "UI")


def test_content_sequence_text_and_overlay_text_follow_the_options(keyring: Keyring) -> None:
    planted = NAMES[0]
    [basic] = _protect(planted_series(planted, n=1), keyring)
    assert basic.ContentSequence[0].TextValue == "ANONYMIZED"  # D: the item's text replaced
    assert basic.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # codes stay
    assert (0x6000, 0x0022) not in basic and (0x6000, 0x1500) not in basic  # go with Overlay Data (X)

    route = RouteSpec(options=frozenset({"clean_structured_content", "clean_graphics"}))
    [clean] = _protect(planted_series(planted, n=1), keyring, route)
    assert clean.ContentSequence[0].TextValue == "* *: findings"  # C: the name scrubbed, the finding kept
    assert clean[0x60000022].value == "marks of * *" and clean[0x60001500].value == "* *"
    codes = {item.CodeValue for item in clean.DeidentificationMethodCodeSequence}
    assert {"113103", "113104"} <= codes


def test_graphic_annotation_text_is_replaced_or_cleaned(keyring: Keyring) -> None:
    def with_annotation() -> list[Dataset]:
        series = planted_series(NAMES[3], n=1)  # Cyrillic
        text = Dataset()
        text.UnformattedTextValue = f"{' '.join(NAMES[3].parts)} R"
        annotation = Dataset()
        annotation.GraphicLayer = "LAYER1"
        annotation.TextObjectSequence = Sequence([text])
        series[0].GraphicAnnotationSequence = Sequence([annotation])
        return series

    [basic] = _protect(with_annotation(), keyring)
    assert basic.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "ANONYMIZED"
    assert basic.GraphicAnnotationSequence[0].GraphicLayer == "LAYER1"
    [clean] = _protect(with_annotation(), keyring, RouteSpec(options=frozenset({"clean_graphics"})))
    assert clean.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "* * R"


def _real_series(folder: str) -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(p) for p in sorted((REAL / folder).iterdir())]


@pytest.mark.filterwarnings("ignore")
def test_real_series_are_not_held_back_for_values_that_are_no_identity(keyring: Keyring) -> None:
    """The false quarantines seen on real files, on pydicom's real multi-slice series."""
    knee = _real_series("98892003/MR700")  # Philips MR, 7 slices
    for ds in knee:  # an anonymised patient named after the body part
        ds.PatientName, ds.BodyPartExamined, ds.ReceiveCoilName = "KNEE", "KNEE", "SENSE-Knee-8"
    assert len(_protect(knee, keyring)) == 7

    vendor = _real_series("98892001/CT5N")  # GE CT, 5 slices
    for ds in vendor:  # the institution bears the manufacturer's name
        ds.InstitutionName = str(ds.Manufacturer)
        ds.DetectorDescription = f"{ds.Manufacturer} detector"
    assert len(_protect(vendor, keyring)) == 5

    removed = _real_series("77654033/CT2")  # GE CT, 4 slices
    for ds in removed:  # a patient named like the value the gateway writes itself
        ds.PatientName = "REMOVED"
    outs = _protect(removed, keyring)
    assert [str(o.LongitudinalTemporalInformationModified) for o in outs] == ["REMOVED"] * 4

    for ds in knee:  # and real identity in a kept text of the same series is still caught
        ds.PatientName = "Doe^Peter"
    knee[3].WindowCenterWidthExplanation = "PETER DOE"
    with pytest.raises(Quarantine, match=r"\(0028,1055\) WindowCenterWidthExplanation"):
        _protect(knee, keyring)


def test_the_gateway_s_own_envelope_block_and_written_values_are_not_searched() -> None:
    from gateway import envelope

    needles = gate.Needles({"coverless", "REMOVED"}, {"COVERLESS^WARD"}, written={"REMOVED"})
    ds = Dataset()
    block = ds.private_block(envelope.GROUP, envelope.CREATOR, create=True)
    block.add_new(0x06, "LO", ["redaction", "coverless"])  # the stage names the envelope lists
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    assert gate.scan(ds, _encode_plain(ds), needles) == []
    other = ds.private_block(0x0029, "ACME NOTES 1", create=True)
    other.add_new(0x10, "LO", "coverless")
    assert [h.where for h in gate.scan(ds, b"", needles)] == ["(0029,1010)"]


def _encode_plain(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("planted", [NAMES[-1], NAMES[7]], ids=lambda p: p.label)
def test_a_name_under_a_wrongly_declared_character_set_is_still_caught(planted: Planted, keyring: Keyring) -> None:
    """Bytes of one character set in an object that declares another (a common modality
    mistake): UTF-8 declared as Latin-1, ISO 2022 IR 87 declared as IR 13 (Shift JIS)."""
    declared, wrong = {"utf-8": (b"ISO_IR 192", b"ISO_IR 100")}.get(
        planted.label, (b"\\ISO 2022 IR 87", b"\\ISO 2022 IR 13"))
    raws = [encode(ds).replace(declared, wrong) for ds in planted_series(planted, retained=True)]
    assert all(wrong in raw for raw in raws)
    with pytest.raises(Quarantine, match=r"\(0028,1055\)"):
        protect_series(raws, RouteSpec(), keyring, MemoryDataKeys())
    raws = [encode(ds).replace(declared, wrong) for ds in planted_series(planted)]
    outs = protect_series(raws, RouteSpec(), keyring, MemoryDataKeys())
    for part in planted.parts:
        encoded = _ESCAPE.sub(b"", part.encode("utf-8" if planted.label == "utf-8" else "iso2022_jp"))
        assert not any(encoded in out.data for out in outs)


@pytest.mark.filterwarnings("ignore")
def test_a_station_kept_by_retain_device_identity_may_bear_the_institution_s_name(keyring: Keyring) -> None:
    series = _real_series("98892001/CT2N")  # GE CT, 2 slices
    for ds in series:
        ds.InstitutionName, ds.StationName = "UIH", "UIH-CT2"
    route = RouteSpec(options=frozenset({"retain_device_identity"}))
    assert [str(o.StationName) for o in _protect(series, keyring, route)] == ["UIH-CT2"] * 2
    series[0].StationName = "CT2 of Doe^Peter"  # not what the original held there for the series
    with pytest.raises(Quarantine, match=r"\(0008,1010\) StationName: PatientName"):
        _protect(series, keyring, route)


@pytest.mark.filterwarnings("ignore")
def test_a_gate_that_sees_original_and_copy_excuses_the_same_descriptors(keyring: Keyring) -> None:
    """The retrieval's egress gate has the original (from the envelope) and the copy, not the profile."""
    from gateway.deid.deidentify import kept_descriptors

    [original] = _real_series("98892003/MR700")[:1]
    original.PatientName, original.ReceiveCoilName = "KNEE", "SENSE-Knee-8"
    [copy] = _protect([original], keyring)
    kept = kept_descriptors(original, copy)
    assert kept["ReceiveCoilName"] == {"SENSE-Knee-8"} and "PatientName" not in kept
    assert gate.scan(copy, b"", gate.Needles({"KNEE"}, {"KNEE"}))  # without: the coil name hits
    assert gate.scan(copy, b"", gate.Needles({"KNEE"}, {"KNEE"}, kept=kept)) == []
