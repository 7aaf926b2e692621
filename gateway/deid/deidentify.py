"""Header de-identification: PS3.15 Annex E actions applied to a whole dataset.

Works on a copy, or in place where the caller has no further use for the parsed original
(the protect path: the original is kept byte for byte in the recovery envelope, cut from
its bytes before), so nothing here needs to be reversible. Besides the new dataset it returns the original
values it removed or replaced: the PHI gate scans the outgoing object for them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from gateway.deid.profile import Profile
from gateway.gate import declared_charset
from gateway.pseudonym import Pseudonymizer, shift_da, shift_dt

GATEWAY_NAME = "privacy-gateway"
# Identity that a plugin (OCR matching, coverless) may need, from the top level.
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "OtherPatientIDs",
    "StudyDate",
)
# Dummy values for action D, by VR; UIs get keyed UIDs, sequences are cleaned item by item.
_DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
    "AE": "ANONYMIZED", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000",
    "AS": "000Y", "IS": "0", "DS": "0", "UR": "",
}
_DUMMY_TEXTS = {v for v in _DUMMY.values() if v} | {"ANONYMOUS", "ANONYMISED"}
# What the gateway writes to mark its work (Longitudinal Temporal Information Modified, ...).
_MARK_VALUES = {"MODIFIED", "UNMODIFIED", "REMOVED", "YES", "DCM"}
# Kept attributes naming a device, anatomy or code: a value the original holds in one of
# them (Manufacturer "UIH", Body Part "KNEE") is not identity there even when a patient or
# institution bears the same name; the gate is told these values.
DESCRIPTORS = frozenset({
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "BodyPartExamined", "ReceiveCoilName",
    "TransmitCoilName", "DetectorDescription", "DetectorType", "DetectorManufacturerName",
    "DetectorManufacturerModelName", "SecondaryCaptureDeviceManufacturer",
    "SecondaryCaptureDeviceManufacturerModelName", "SecondaryCaptureDeviceSoftwareVersions", "CodeValue",
    "CodeMeaning", "LongCodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "SequenceName",
    "PulseSequenceName", "ScanOptions", "ConvolutionKernel", "FilterType", "ContrastBolusAgent", "ImageType",
    "Laterality", "ImageLaterality", "ViewPosition", "PatientPosition",
    "TransducerData", "TransducerType", "CollimatorType", "Grid",
    # kept only under the Retain Device Identity Option
    "StationName", "DeviceLabel", "DeviceDescription", "DeviceSerialNumber",
})
# Free text inside a sequence the profile replaces (D) or cleans (C): what the coded
# parts of an item are not.
_CODE_KEYWORDS = frozenset({"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
                            "LongCodeValue", "URNCodeValue", "ValueType", "RelationshipType", "ContinuityOfContent",
                            "TemplateIdentifier", "MappingResource", "GraphicLayer", "GraphicType"})
_ITEM_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


@dataclass
class DeidResult:
    """The de-identified dataset and what was taken out of it."""

    dataset: Dataset
    identifiers: set[str] = field(default_factory=set)
    patient_names: set[str] = field(default_factory=set)
    identity: dict[str, str] = field(default_factory=dict)
    # For the gate: the attribute each identifier came from, the values the profile wrote,
    # the values kept device/anatomy/code attributes hold, and the declared character sets.
    kinds: dict[str, str] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    kept: dict[str, set[str]] = field(default_factory=dict)
    charsets: tuple[str, ...] = ()


class Deidentifier:
    """Applies one profile with one pseudonym secret."""

    def __init__(
        self,
        profile: Profile,
        pseudonyms: Pseudonymizer,
        keep_private: tuple[tuple[int, str], ...] = (),
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonyms
        # (group, private creator) blocks a site chose to keep.
        self.keep_private = {(g, c.strip().upper()) for g, c in keep_private}

    def run(self, original: Dataset, in_place: bool = False) -> DeidResult:
        """De-identify ``original``; ``in_place`` changes it instead of a deep copy (a copy of
        a 512x512 CT's dataset cost as much as its PHI gate)."""
        identity = {k: str(original.get(k, "") or "") for k in IDENTITY_KEYWORDS if original.get(k)}
        tokens = _scrub_tokens(original, self.profile)
        charsets = declared_charset(original)
        patient_id = str(original.get("PatientID", "") or "")
        ds = original if in_place else copy.deepcopy(original)
        result = DeidResult(dataset=ds, identity=identity)
        walk = _Walk(self, result, patient_id, tokens)
        walk.dataset(ds)
        self._mark(ds)
        result.written |= _DUMMY_TEXTS | _MARK_VALUES | {str(ds.DeidentificationMethod)}
        result.written |= {text for code in self.profile.method_codes() for text in code}
        result.charsets = charsets
        if hasattr(ds, "file_meta") and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return result

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"{GATEWAY_NAME} PS3.15 E.1-1 {len(self.profile.options)} options"
        codes = Sequence()
        for value, meaning in self.profile.method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        if "retain_longitudinal_modified_dates" in self.profile.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        elif "retain_longitudinal_full_dates" in self.profile.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"


class _Walk:
    """One pass over a dataset and its sequences."""

    def __init__(self, owner: Deidentifier, result: DeidResult, patient_id: str, tokens: list[str]) -> None:
        self.owner = owner
        self.result = result
        self.shift = owner.pseudonyms.date_shift_days(patient_id)
        self.patient_pseudonym = owner.pseudonyms.patient_id(patient_id)
        self.tokens = tokens

    def dataset(self, ds: Dataset) -> None:
        creators_kept: set[int] = set()
        for elem in list(ds):
            if elem.tag.is_private:
                if self._private_kept(ds, elem, creators_kept):
                    continue
                self._remember(elem)
                del ds[elem.tag]
                continue
            action = self.owner.profile.action(elem.tag)
            if action is None:
                action = "Z" if elem.VR == "PN" else "K" if _in_dictionary(elem.tag) else "X"
            if action == "K" and elem.keyword in DESCRIPTORS and elem.value not in (None, ""):
                values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
                self.result.kept.setdefault(elem.keyword, set()).update(str(v) for v in values)
            self._apply(ds, elem, action)

    def _private_kept(self, ds: Dataset, elem: DataElement, kept: set[int]) -> bool:
        group = elem.tag.group
        if elem.tag.element < 0x0100:  # a private creator element itself
            creator = str(elem.value).strip().upper()
            return (group, creator) in self.owner.keep_private
        creator_tag = (group << 16) | (elem.tag.element >> 8)
        block = ds.get(creator_tag)
        return block is not None and (group, str(block.value).strip().upper()) in self.owner.keep_private

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if elem.VR == "SQ":
            self._sequence(ds, elem, action)
            return
        if action == "K":
            return
        if action != "C" or elem.VR in ("DA", "DT"):  # cleaned text stays, by design
            self._remember(elem)
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            pseudonymized = elem.keyword in ("PatientID", "PatientName", "AccessionNumber")
            elem.value = self._pseudonym(elem) if pseudonymized else None
            if elem.value is None:
                elem.value = b"" if elem.VR in ("OB", "OW", "UN") else ""
        elif action == "D":
            elem.value = self._dummy(elem)
        elif action in ("U", "U*"):
            elem.value = self._uids(elem.value)
        elif action == "C":
            elem.value = self._clean(elem)

    def _sequence(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if action == "X":
            self._remember(elem)
            del ds[elem.tag]
        elif action == "Z":
            self._remember(elem)
            elem.value = Sequence()
        else:  # K, D, U*, C: keep the structure, de-identify every item
            for item in elem.value:
                self.dataset(item)
                if action in ("D", "C"):  # and the free text the table does not list
                    self._item_text(item, action)

    def _item_text(self, item: Dataset, action: str) -> None:
        """Free text in the items of a sequence the profile replaces (``D``: Content
        Sequence, Graphic Annotation Sequence) or cleans (``C``: under Clean Structured
        Content / Clean Graphics): dummy text, or this patient's identity scrubbed out.
        Codes stay: they are the structure a reader needs."""
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    self._item_text(sub, action)
            elif elem.VR in _ITEM_TEXT_VRS and elem.keyword not in _CODE_KEYWORDS and elem.value not in (None, ""):
                self._remember(elem)
                if action == "D":
                    elem.value = self._dummy(elem)
                else:
                    elem.value = _map(elem.value, self._scrub)

    def _pseudonym(self, elem: DataElement) -> str | None:
        text = str(elem.value or "")
        if not text:
            return None
        pseudonym = (self.owner.pseudonyms.accession(text) if elem.keyword == "AccessionNumber"
                     else self.patient_pseudonym)
        self.result.written.add(pseudonym)
        return pseudonym

    def _dummy(self, elem: DataElement) -> object:
        if elem.keyword == "PatientID":
            self.result.written.add(self.patient_pseudonym)
            return self.patient_pseudonym
        if elem.VR == "UI":
            return self._uids(elem.value)
        if elem.VR in _NUMERIC_VRS:
            return 0
        if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            return b""
        dummy = _DUMMY.get(elem.VR, "")
        return dummy if elem.VM <= 1 else [dummy]

    def _uids(self, value: object) -> object:
        if isinstance(value, (list, MultiValue)):
            return [self.owner.pseudonyms.uid(str(v)) for v in value]
        return self.owner.pseudonyms.uid(str(value)) if value else value

    def _clean(self, elem: DataElement) -> object:
        """``C``: shift dates, keep times, scrub this patient's identity out of text."""
        if elem.VR == "DA":
            return _map(elem.value, lambda v: shift_da(v, self.shift))
        if elem.VR == "DT":
            return _map(elem.value, lambda v: shift_dt(v, self.shift))
        if elem.VR == "TM":
            return elem.value
        if elem.VR in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "PN"):
            return _map(elem.value, self._scrub)
        return self._dummy(elem)

    def _scrub(self, text: str) -> str:
        for token in self.tokens:
            text = re.sub(re.escape(token), "*", text, flags=re.IGNORECASE)
        return text

    def _remember(self, elem: DataElement) -> None:
        if elem.VR not in _STRING_VRS or elem.value in (None, ""):
            return
        if elem.VR == "TM":
            return
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for v in values:
            text = str(v).strip()
            if text and _identifying(elem, text):
                self.result.identifiers.add(text)
                self.result.kinds.setdefault(text, elem.keyword or f"private {elem.VR}")
                if elem.keyword in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
                    self.result.patient_names.add(text)


def _identifying(elem: DataElement, text: str) -> bool:
    """Whether a removed value is identity the PHI gate must never see again.

    Descriptions, codes and device names are removed by the profile too, but their
    values (``WHOLE BODY``, ``TOSHIBA``) legitimately recur in kept attributes, so the
    gate looks for people, patients, institutions, addresses, identifiers, dates and UIDs.
    """
    keyword = elem.keyword
    if elem.VR in ("IS", "DS", "AS", "TM") or text.upper() in _DUMMY_TEXTS:
        return False
    if elem.VR == "PN":
        parts = [p for p in re.split(r"[\^=]", text) if p.strip()]
        return keyword.startswith(("Patient", "OtherPatient")) or len(parts) >= 2
    if elem.VR in ("UI", "DA", "DT"):
        return True
    if keyword.startswith(("Patient", "OtherPatient", "Issuer")) or keyword.endswith(("ID", "IDs", "Number")):
        return True
    places = ("Address", "Telephone", "Telecom", "Institution", "Department", "Accession")
    return any(place in keyword for place in places)


def kept_descriptors(original: Dataset, protected: Dataset) -> dict[str, set[str]]:
    """The device, anatomy and code values a protected copy holds as its original held them,
    for a gate that sees both but not the profile (the retrieval's egress gate): what
    ``DeidResult.kept`` says at protect time."""
    def values(ds: Dataset) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for elem in ds.iterall():
            if elem.keyword in DESCRIPTORS and elem.value not in (None, ""):
                items = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
                found.setdefault(elem.keyword, set()).update(str(v) for v in items)
        return found

    before, after = values(original), values(protected)
    return {k: before[k] & after[k] for k in before.keys() & after.keys() if before[k] & after[k]}


def _in_dictionary(tag: int) -> bool:
    """Whether the standard defines ``tag``. An element it does not know (a damaged tag, a
    vendor's misuse of a public group) cannot be judged, so it is removed, not kept."""
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _map(value: object, fn: Callable[[str], object]) -> object:
    if isinstance(value, (list, MultiValue)):
        return [fn(str(v)) for v in value]
    return fn(str(value)) if value not in (None, "") else value


def _scrub_tokens(ds: Dataset, profile: Profile) -> list[str]:
    """What ``C`` scrubs out of kept text: every value the profile takes out elsewhere in
    the object, and each part of every person name, longest first."""
    tokens: set[str] = set()

    def visit(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    visit(sub)
                continue
            if elem.VR not in _STRING_VRS or elem.VR == "TM" or elem.value in (None, ""):
                continue
            action = profile.action(elem.tag)
            if elem.VR != "PN" and action in (None, "K", "C"):
                continue
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            for value in map(str, values):
                if len(value.strip()) >= 3:
                    tokens.add(value.strip())
                if elem.VR == "PN":
                    tokens.update(w for w in re.split(r"[\^ =,]+", value) if len(w) >= 3)

    visit(ds)
    return sorted(tokens, key=len, reverse=True)
