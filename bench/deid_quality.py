"""De-identification quality: both error kinds, over real files and planted names; prints JSON.

- real: every storable file pydicom ships (test files, character-set files, pydicom-data),
  grouped into series by Series Instance UID (pydicom's DICOMDIR test studies are real
  multi-slice series) and protected as the worker does. ``false_quarantines`` counts series
  the PHI gate held back (goal 0), each with the element path and kind it named;
  ``identity_left`` counts objects whose protected copy still holds the original's patient
  name, patient ID or Study Instance UID (decoded or raw, goal 0).
- planted: a fictional name in each of 13 character sets (``gateway.deid.planted``) written
  into 10 places per object (patient module, nested sequence, free text, private LO and UN,
  overlay description and label, content sequence); ``found`` counts name parts left in
  the protected copies, decoded or in the bytes of every encoding (goal 0). The same
  objects with the name also in a retained free-text attribute must be quarantined:
  ``retained_passed`` counts those that were not (goal 0).
- ms_per_object: header de-identification alone and the PHI gate alone, median and 95th
  percentile over every object above; ms_per_ct_512 the same for ten 512x512 CT objects
  (where the raw search over half a megabyte of pixels dominates).

    .venv/bin/python -m bench.deid_quality [--objects 2]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files, get_testdata_files

from gateway import gate
from gateway.deid.deidentify import _DUMMY_TEXTS, Deidentifier
from gateway.deid.profile import Profile
from gateway.keyring import Keyring
from gateway.protect import Quarantine, protect_series
from gateway.pseudonym import Pseudonymizer
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from testkit import synthetic
from testkit.planted import NAMES, Planted, planted_series

PLACES = 10  # where planted_series writes the name in each object
_ESCAPE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")
_DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests"


def real_series() -> dict[str, list[bytes]]:
    """Every readable storable file pydicom and pydicom-data ship, by series."""
    files = set(get_testdata_files("*")) | set(get_charset_files("*.dcm"))
    files |= {str(p) for p in _DICOMDIR_TESTS.rglob("*") if p.is_file() and p.name != "DICOMDIR"}
    series: dict[str, list[bytes]] = defaultdict(list)
    for name in sorted(files):
        if not Path(name).is_file():
            continue
        raw = Path(name).read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), force=True)
            key = str(ds.SeriesInstanceUID)
            ds.SOPInstanceUID, ds.StudyInstanceUID  # noqa: B018
        except Exception:  # noqa: BLE001 - not a storable object
            continue
        series[key].append(raw)
    return series


def _left_in(original: pydicom.Dataset, data: bytes) -> bool:
    """Whether the protected bytes still hold the original's name, ID or study UID."""
    ds = pydicom.dcmread(io.BytesIO(data))
    text = gate.words(" ".join(str(e.value) for e in ds.iterall() if e.VR in gate._STRING_VRS))
    values = [str(original.get(k, "") or "").strip() for k in ("PatientName", "PatientID", "StudyInstanceUID")]
    values = [v for v in values if gate.width(gate.words(v).strip()) >= 4 and v.upper() not in _DUMMY_TEXTS]
    return any(gate.words(v) in text or (gate.width(v) >= 6 and v.encode("utf-8", "ignore") in data) for v in values)


def bench_real(keyring: Keyring) -> dict[str, object]:
    quarantined: list[dict[str, object]] = []
    objects = left = other = 0
    series = real_series()
    for raws in series.values():
        objects += len(raws)
        try:
            outs = protect_series(raws, RouteSpec(), keyring, MemoryDataKeys())
        except Quarantine as exc:
            if "PHI gate" in str(exc):
                quarantined.append({"objects": len(raws), "reason": str(exc)})
            else:
                other += 1
            continue
        for raw, out in zip(raws, outs, strict=True):
            left += _left_in(pydicom.dcmread(io.BytesIO(raw), force=True), out.data)
    return {"series": len(series), "objects": objects, "false_quarantines": len(quarantined),
            "false_quarantine_objects": sum(int(q["objects"]) for q in quarantined),  # type: ignore[call-overload]
            "quarantine_reasons": quarantined, "not_one_series_or_unparsable": other, "identity_left": left}


def _found(planted: Planted, data: bytes) -> int:
    ds = pydicom.dcmread(io.BytesIO(data))
    text = gate.words(" ".join(str(e.value) for e in ds.iterall() if e.VR in gate._STRING_VRS))
    found = 0
    for part in planted.parts:
        raws = set()
        for codec in {*convert_encodings(list(planted.charset)), "utf-8"}:
            try:
                raws.add(_ESCAPE.sub(b"", part.encode(codec)))
            except UnicodeError:
                continue
        found += gate.words(part) in text or any(r in data for r in raws)
    return found


def bench_planted(keyring: Keyring, objects: int) -> dict[str, object]:
    per_charset: dict[str, dict[str, int]] = {}
    for planted in NAMES:
        raws = [_encode(ds) for ds in planted_series(planted, n=objects)]
        outs = protect_series(raws, RouteSpec(), keyring, MemoryDataKeys())
        retained = [_encode(ds) for ds in planted_series(planted, n=objects, retained=True)]
        try:
            protect_series(retained, RouteSpec(), keyring, MemoryDataKeys())
            passed = len(retained)
        except Quarantine:
            passed = 0
        per_charset[planted.label] = {"planted": PLACES * len(raws), "found": sum(_found(planted, o.data) for o in outs),
                                      "retained_passed": passed}
    total = {k: sum(v[k] for v in per_charset.values()) for k in ("planted", "found", "retained_passed")}
    return {**total, "per_charset": per_charset}


def bench_times(datasets: list[pydicom.Dataset]) -> dict[str, dict[str, float]]:
    deid = Deidentifier(Profile(), Pseudonymizer(b"\x01" * 32))
    deid_ms, gate_ms = [], []
    for ds in datasets:
        start = time.perf_counter()
        result = deid.run(ds)
        deid_ms.append((time.perf_counter() - start) * 1e3)
        needles = gate.Needles(result.identifiers, result.patient_names, kinds=result.kinds, written=result.written,
                               kept=result.kept, charsets={result.charsets} if result.charsets else set())
        try:
            data = _encode(result.dataset)
        except Exception:  # noqa: BLE001 - a damaged test file pydicom cannot write back: deid timed only
            continue
        start = time.perf_counter()
        gate.scan(result.dataset, data, needles)
        gate_ms.append((time.perf_counter() - start) * 1e3)
    return {name: {"objects": len(ms), "median": round(statistics.median(ms), 2),
                   "p95": round(statistics.quantiles(ms, n=20)[-1], 2)}
            for name, ms in (("deidentify", deid_ms), ("gate", gate_ms))}


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2, help="objects per planted series")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        keyring = Keyring.create(Path(tmp) / "keyring.json")
        report = {"real": bench_real(keyring), "planted": bench_planted(keyring, args.objects)}
    corpus = [pydicom.dcmread(io.BytesIO(raw), force=True) for raws in real_series().values() for raw in raws]
    corpus += [ds for planted in NAMES for ds in planted_series(planted, n=args.objects, size=64)]
    report["ms_per_object"] = bench_times(corpus)
    report["ms_per_ct_512"] = bench_times(synthetic.ct_series(10, size=512))  # the raw search's share
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
