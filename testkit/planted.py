"""Crafted objects with a patient's name planted in every kind of place, in every script.

For the de-identification tests and ``bench/deid_quality.py``: one fictional name per
Specific Character Set (Latin-1 to UTF-8, ISO 2022 code extensions included), written into
the patient module, nested sequences, free text, private blocks, overlays and a content
sequence. ``retained`` puts it also where the profile keeps text, which only the PHI gate
can catch.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from testkit import synthetic

PRIVATE_CREATOR = "ACME NOTES 1"


@dataclass(frozen=True)
class Planted:
    """A name in one character set: the PN value, its parts as free text writes them,
    and the Specific Character Set that can encode it."""

    label: str
    charset: tuple[str, ...]
    name: str
    parts: tuple[str, ...]


NAMES = (
    Planted("latin-1", ("ISO_IR 100",), "Müller^Jürgen", ("Müller", "Jürgen")),
    Planted("latin-2", ("ISO_IR 101",), "Dvořák^Jiří", ("Dvořák", "Jiří")),
    Planted("greek", ("ISO_IR 126",), "Παπαδόπουλος^Γιάννης", ("Παπαδόπουλος", "Γιάννης")),
    Planted("cyrillic", ("ISO_IR 144",), "Иванов^Сергей", ("Иванов", "Сергей")),
    Planted("hebrew", ("ISO_IR 138",), "כהנוביץ^משה", ("כהנוביץ", "משה")),
    Planted("arabic", ("ISO_IR 127",), "الخطيب^محمد", ("الخطيب", "محمد")),
    Planted("thai", ("ISO_IR 166",), "สมชาย^ใจดีมาก", ("สมชาย", "ใจดีมาก")),
    Planted("japanese-ir87", ("", "ISO 2022 IR 87"), "山田^太郎", ("山田", "太郎")),
    Planted("japanese-ir13", ("ISO 2022 IR 13", "ISO 2022 IR 87"), "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", ("ﾔﾏﾀﾞ", "山田", "太郎")),
    Planted("korean-ir149", ("", "ISO 2022 IR 149"), "홍^길동", ("길동",)),
    Planted("chinese-gb18030", ("GB18030",), "诸葛^孔明", ("诸葛", "孔明")),
    Planted("chinese-ir58", ("", "ISO 2022 IR 58"), "欧阳^娜娜", ("欧阳", "娜娜")),
    Planted("utf-8", ("ISO_IR 192",), "Nguyễn^Thị Minh Khai", ("Nguyễn", "Khai")),
)


def planted_series(planted: Planted, n: int = 2, size: int = 16, retained: bool = False,
                   series_number: int = 1) -> list[Dataset]:
    """A small CT series whose patient bears ``planted.name``, the name written into every
    kind of place the profile removes or replaces; with ``retained`` also into Window
    Center & Width Explanation, which the profile keeps."""
    identity = synthetic.Identity(patient_name=planted.name, patient_id=f"PID-{planted.label}",
                                  accession=f"ACC-{planted.label[:12]}")  # a study of its own
    series = synthetic.ct_series(n, size=size, identity=identity, series_number=series_number)
    text = " ".join(planted.parts)
    for ds in series:
        ds.SpecificCharacterSet = list(planted.charset) if len(planted.charset) > 1 else planted.charset[0]
        ds.OtherPatientNames = planted.name
        ds.PatientComments = f"{text} came in"
        ds.ImageComments = f"seen {text}"
        request = Dataset()
        request.RequestedProcedureDescription = f"CT for {text}"
        ds.RequestAttributesSequence = Sequence([request])
        ds.ContentSequence = Sequence([_text_item(f"{text}: findings")])
        ds.add_new(0x60000022, "LO", f"marks of {text}")  # Overlay Description
        ds.add_new(0x60001500, "LO", text)  # Overlay Label
        block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
        block.add_new(0x10, "LO", text)
        block.add_new(0x11, "UN", encode_string(text, convert_encodings(list(planted.charset))))
        if retained:
            ds.WindowCenterWidthExplanation = f"WINDOW {text}"
    return series


def _text_item(text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    return item
