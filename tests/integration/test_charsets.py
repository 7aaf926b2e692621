"""Names in non-Latin scripts never reach Orthanc; a real multi-slice series does."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings
from pydicom.uid import PYDICOM_ROOT_UID

from testkit.localstack import GatewayProcess, OrthancServer, storescu
from testkit.planted import NAMES, planted_series
from tests.conftest import encode
from tests.integration.conftest import wait_for

_ESCAPE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")
PASSING = [NAMES[7], NAMES[5], NAMES[10]]  # Japanese (ISO 2022 IR 87), Arabic, Chinese (GB18030)
HELD = [NAMES[4], NAMES[9]]  # Hebrew, Korean (ISO 2022 IR 149): also in retained free text
MR = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests/98892003/MR700"


def test_names_in_any_script_never_reach_orthanc_and_a_real_series_does(
        tmp_path: Path, orthanc: OrthancServer, gateway: GatewayProcess) -> None:
    send = tmp_path / "send"
    send.mkdir()
    for planted in PASSING + HELD:
        for i, ds in enumerate(planted_series(planted, n=1, retained=planted in HELD)):
            if planted is PASSING[0]:  # a UID pynetdicom quotes in its warning: "Non-conformant"
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{PYDICOM_ROOT_UID}0713.{i}"
            (send / f"{planted.label}_{i}.dcm").write_bytes(encode(ds))
    for path in sorted(MR.iterdir()):  # Philips MR, 7 slices; an anonymised patient called KNEE
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.BodyPartExamined, ds.ReceiveCoilName = "KNEE", "KNEE", "SENSE-Knee-8"
        (send / f"mr_{path.name}.dcm").write_bytes(encode(ds))
    storescu(gateway.port, send)

    wait_for(lambda: len(orthanc.get("instances")) == len(PASSING) + 7, timeout=120)
    def quarantined() -> str | None:
        status = gateway.status()
        return status if status.count("PHI gate") == len(HELD) else None

    status = wait_for(quarantined)
    assert "WindowCenterWidthExplanation: PatientName" in status
    assert len(orthanc.get("series")) == len(PASSING) + 1  # the real series arrived whole
    # the log has pynetdicom's diagnosis, not the UID (the session's log check searches for it)
    assert "Non-conformant 'Affected SOP Instance UID' value [value withheld]" in gateway.log_path.read_text()

    needles = []
    for planted in PASSING + HELD:
        for part in planted.parts:
            for codec in {*convert_encodings(list(planted.charset)), "utf-8"}:
                try:
                    encoded = _ESCAPE.sub(b"", part.encode(codec))
                except UnicodeError:
                    continue
                if len(encoded) >= 4:  # 3 bytes turn up by chance in a megabyte of MR pixels
                    needles.append(encoded)
            assert part not in status
    for instance in orthanc.get("instances"):
        raw = orthanc.get(f"instances/{instance}/file")
        tags = str(orthanc.get(f"instances/{instance}/simplified-tags"))
        held = pydicom.dcmread(io.BytesIO(raw))
        text = " ".join(str(e.value) for e in held.iterall() if isinstance(e.value, str))
        for planted in PASSING + HELD:
            for part in planted.parts:
                assert part not in tags and part not in text, f"a {planted.label} name part reached Orthanc"
        assert not [n for n in needles if n in raw], "a name part's bytes reached Orthanc"
