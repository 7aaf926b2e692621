"""Retrieval's pure parts: the identifier check, planning, C-FIND answers, batches, the
egress gate, the authenticity tag, and destinations bound to their owners."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway import authenticity
from gateway.config import Retrieval
from gateway.index import Entry
from gateway.keyring import Keyring
from gateway.protect import protect_series
from gateway.retrieval import answers
from gateway.retrieval.identifier import IdentifierError, selection
from gateway.retrieval.planner import Planned, TooManyStudies, plan
from gateway.retrieval.sending import BATCH, Refused, _batches, egress_checked
from gateway.retrieval.vocabulary import Policy
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from testkit import synthetic
from tests.conftest import encode


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _entry(patient: str, study: str, series: str, sop: str, stages: tuple[str, ...] = ("none",)) -> Entry:
    original = {"PatientID": patient, "StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop,
                "PatientName": f"NAME^{patient}", "Modality": "CT"}
    return Entry(f"2.25.{study}", f"2.25.{series}", f"2.25.{sop}", f"P-{patient}", f"orthanc-{sop}",
                 "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", stages, original, "00")


ARCHIVE = [_entry("A", "1.1", "1.1.1", "1.1.1.1"), _entry("A", "1.1", "1.1.1", "1.1.1.2"),
           _entry("A", "1.2", "1.2.1", "1.2.1.1"), _entry("B", "2.1", "2.1.1", "2.1.1.1")]


@pytest.mark.parametrize("identifier", [
    _identifier("STUDY"),  # no key at all
    _identifier("STUDY", StudyInstanceUID=""),  # the empty key that used to match the whole archive
    _identifier("STUDY", PatientName="ROE*"),  # a name is no unique key
    _identifier("STUDY", StudyInstanceUID="1.2.*"),  # wildcards are C-FIND's, not C-MOVE's
    _identifier("STUDY", StudyInstanceUID="1.2.840.abc"),
    _identifier("SERIES", SeriesInstanceUID="1.1.1"),  # the study above is missing
    _identifier("SERIES", StudyInstanceUID=["1.1", "1.2"], SeriesInstanceUID="1.1.1"),  # a list above the level
    _identifier("PATIENT", PatientID="A"),  # no patient level in Study Root
    _identifier("FRAME", StudyInstanceUID="1.1"),
])
def test_identifiers_that_do_not_name_their_objects_are_refused(identifier: Dataset) -> None:
    with pytest.raises(IdentifierError):
        selection(identifier, patient_root=False)


def test_patient_root_needs_a_single_patient_id_above_every_level() -> None:
    for bad in (_identifier("STUDY", StudyInstanceUID="1.1"), _identifier("STUDY", PatientID="", StudyInstanceUID="1.1"),
                _identifier("PATIENT", PatientID="A*")):
        with pytest.raises(IdentifierError):
            selection(bad, patient_root=True)
    chosen = selection(_identifier("STUDY", PatientID="A", StudyInstanceUID=["1.1", "1.2"]), patient_root=True)
    assert chosen.patient_id == "A" and chosen.study_uids == {"1.1", "1.2"}


def test_a_selection_reaches_exactly_what_it_names() -> None:
    def sops(identifier: Dataset, policy: Policy = Policy.RESTORE, patient_root: bool = False) -> list[str]:
        return [p.entry.original["SOPInstanceUID"] for p in plan(ARCHIVE, selection(identifier, patient_root), policy, 20)]

    assert sops(_identifier("STUDY", StudyInstanceUID="1.1")) == ["1.1.1.1", "1.1.1.2"]
    assert sops(_identifier("STUDY", StudyInstanceUID=["1.1", "2.1"])) == ["1.1.1.1", "1.1.1.2", "2.1.1.1"]
    assert sops(_identifier("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1", SOPInstanceUID="1.1.1.2")) \
        == ["1.1.1.2"]
    assert sops(_identifier("PATIENT", PatientID="A"), patient_root=True) == ["1.1.1.1", "1.1.1.2", "1.2.1.1"]
    # a patient ID that does not own the study narrows to nothing, it never widens
    assert sops(_identifier("STUDY", PatientID="B", StudyInstanceUID="1.1"), patient_root=True) == []
    # pseudonymized workstations name what Orthanc holds; original UIDs reach nothing
    assert sops(_identifier("STUDY", StudyInstanceUID="1.1"), Policy.PSEUDONYMIZED) == []
    assert sops(_identifier("STUDY", StudyInstanceUID="2.25.1.1"), Policy.PSEUDONYMIZED) == ["1.1.1.1", "1.1.1.2"]


def test_a_retrieval_beyond_the_workstations_ceiling_is_refused() -> None:
    chosen = selection(_identifier("PATIENT", PatientID="A"), patient_root=True)
    assert len(plan(ARCHIVE, chosen, Policy.RESTORE, 2)) == 3
    with pytest.raises(TooManyStudies):
        plan(ARCHIVE, chosen, Policy.RESTORE, 1)


def test_find_answers_group_by_the_levels_unique_key() -> None:
    query = _identifier("STUDY", PatientName="NAME^A", StudyInstanceUID="", ModalitiesInStudy="",
                        NumberOfStudyRelatedInstances="")
    found = [(study, merged) for study, merged in answers.grouped(ARCHIVE, "STUDY") if answers.matches_all(query, merged)]
    assert sorted(m["StudyInstanceUID"] for _, m in found) == ["1.1", "1.2"]
    reply = answers.answer(query, dict(found[0][1]), "STUDY", "GATEWAY")
    assert reply.NumberOfStudyRelatedInstances in (1, 2) and reply.ModalitiesInStudy == "CT"
    assert "SOPInstanceUID" not in answers.answer(_identifier("STUDY", SOPInstanceUID=""), found[0][1], "STUDY", "GW")


def test_batches_split_series_unless_a_stage_needs_the_whole_series() -> None:
    split = [Planned(f"i{n}", _entry("A", "1", "s1", f"1.{n}")) for n in range(2 * BATCH + 3)]
    split += [Planned(f"j{n}", _entry("A", "1", "s2", f"2.{n}")) for n in range(5)]
    assert [len(b) for b in _batches(split)] == [BATCH, BATCH, 8]  # restored while the one before is sent
    whole = [Planned(p.orthanc_id, _entry("A", "1", p.entry.series_uid, p.entry.sop_uid, ("coverless",)))
             for p in split]
    assert [len(b) for b in _batches(whole)] == [2 * BATCH + 3, 5]  # coverless restores only whole series


def test_destinations_receive_what_their_owners_may_see() -> None:
    retrieval = Retrieval.model_validate({
        "workstations": [{"ae_title": "READ", "policy": "restore"}, {"ae_title": "RESEARCH", "policy": "pseudonymized"}],
        "destinations": [{"ae_title": "READ", "host": "h", "port": 1, "owners": ["READ"], "allow_cleartext_originals": True},
                         {"ae_title": "SHARED", "host": "h", "port": 2, "owners": ["READ", "RESEARCH"]},
                         {"ae_title": "RESEARCH", "host": "h", "port": 3, "owners": ["RESEARCH"]}]})
    policy = {d.ae_title: retrieval.destination_policy(d) for d in retrieval.destinations}
    assert policy == {"READ": Policy.RESTORE, "SHARED": Policy.PSEUDONYMIZED, "RESEARCH": Policy.PSEUDONYMIZED}
    assert Policy.least(Policy.RESTORE, policy["RESEARCH"]) is Policy.PSEUDONYMIZED
    for bad in ([], ["NOBODY"]):
        with pytest.raises(ValueError):
            Retrieval.model_validate({"workstations": [{"ae_title": "READ", "policy": "restore"}],
                                      "destinations": [{"ae_title": "X", "host": "h", "port": 1, "owners": bad}]})


def _protected(keyring: Keyring, identity: synthetic.Identity = synthetic.Identity(), **attributes: str) -> bytes:
    original = synthetic.ct_series(1, size=32, identity=identity)[0]
    for keyword, value in attributes.items():
        setattr(original, keyword, value)
    return protect_series([encode(original)], RouteSpec(options=frozenset(), plugin="none"), keyring,
                          MemoryDataKeys())[0].data


def test_the_authenticity_tag_binds_every_byte_and_the_key(keyring: Keyring, tmp_path: Path) -> None:
    signed = authenticity.sign(_protected(keyring), keyring)
    value = str(pydicom.dcmread(io.BytesIO(signed)).private_block(0x0013, "PRIVACY GATEWAY ENVELOPE 1")[0x07].value)
    assert authenticity.verify(signed, value, keyring.authenticity)
    altered = bytearray(signed)
    altered[-3] ^= 1
    assert not authenticity.verify(bytes(altered), value, keyring.authenticity)
    assert not authenticity.verify(signed, value, Keyring.create(tmp_path / "other.json").authenticity)
    forged = signed.replace(value.encode(), authenticity.PLACEHOLDER.encode())  # markers without a tag
    assert not authenticity.verify(forged, authenticity.PLACEHOLDER, keyring.authenticity)
    with pytest.raises(authenticity.AuthenticityError):
        authenticity.sign(signed, keyring)  # signed once already: no placeholder left


def test_an_object_tagged_by_protection_is_tagged_again_only_after_a_rotation(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "ring.json")
    plain = _protected(ring)
    at = plain.find(authenticity.PLACEHOLDER.encode())
    signed = authenticity.tagged(plain, ring)  # the placeholder: signed here
    assert signed != plain and authenticity.verify(signed, signed[at:at + 42].decode(), ring.authenticity)
    assert authenticity.tagged(signed, ring, at) is signed and authenticity.tagged(signed, ring) is signed
    old = ring.authenticity_active
    ring.rotate_authenticity()
    again = authenticity.tagged(signed, ring, at)  # under a key no longer active: made again
    value = again[at:at + 42].decode()
    assert value.startswith(ring.authenticity_active) and not value.startswith(old)
    assert authenticity.verify(again, value, ring.authenticity)
    with pytest.raises(authenticity.AuthenticityError):
        authenticity.tagged(plain.replace(authenticity.PLACEHOLDER.encode(), b"x" * 42), ring)


def test_the_orthanc_filter_accepts_only_tagged_objects(keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    fake = types.ModuleType("orthanc")
    fake.RegisterReceivedInstanceCallback = lambda callback: None  # type: ignore[attr-defined]
    fake.GetConfiguration = lambda: "{}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orthanc", fake)
    import importlib.util

    spec = importlib.util.spec_from_file_location("accept_protected", Path("orthanc/accept_protected.py"))
    plugin = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(plugin)  # type: ignore[union-attr]
    signed = authenticity.sign(_protected(keyring), keyring)
    ds = pydicom.dcmread(io.BytesIO(signed))
    block = ds.private_block(0x0013, "PRIVACY GATEWAY ENVELOPE 1").block_start >> 8
    tags = {"0012,0062": "YES", f"0013,00{block:02x}": "PRIVACY GATEWAY ENVELOPE 1",
            f"0013,{block:02x}01": "1", f"0013,{block:02x}02": "kek-0001",
            f"0013,{block:02x}07": str(ds[0x0013, block << 8 | 0x07].value)}
    assert plugin.is_protected(signed, tags, keyring.authenticity)
    forged = dict(tags)
    forged[f"0013,{block:02x}07"] = authenticity.PLACEHOLDER
    assert not plugin.is_protected(signed, forged, keyring.authenticity)
    assert not plugin.is_protected(signed, tags, {})


def test_the_egress_gate_refuses_protected_objects_that_carry_identity(keyring: Keyring) -> None:
    data = _protected(keyring)
    sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    assert isinstance(egress_checked(data, sop, keyring), Dataset)
    assert isinstance(egress_checked(data, "2.25.1", keyring), Refused)  # not the planned instance
    leaky = pydicom.dcmread(io.BytesIO(data))
    leaky.ImageComments = f"for {synthetic.Identity().patient_name}"  # identity typed in after protection
    assert isinstance(egress_checked(encode(leaky), sop, keyring), Refused)
    stranger = _protected(Keyring.create(keyring.path.with_name("stranger.json")))  # type: ignore[union-attr]
    assert isinstance(egress_checked(stranger, str(pydicom.dcmread(io.BytesIO(stranger)).SOPInstanceUID), keyring),
                      Refused)  # not made with this keyring
    # a patient called like the coil the object keeps is no reason to refuse it
    knee = _protected(keyring, synthetic.Identity(patient_name="KNEE"), ReceiveCoilName="SENSE-Knee-8")
    assert isinstance(egress_checked(knee, str(pydicom.dcmread(io.BytesIO(knee)).SOPInstanceUID), keyring), Dataset)
