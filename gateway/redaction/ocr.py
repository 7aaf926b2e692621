"""Text detection and recognition with tesseract (5.x, English model) in this process.

`tesserocr` links the tesseract library, so a frame costs only the recognition: no process
start, no model load and no PNG encode per frame. One recogniser is made per thread and
reused. OCR runs on one thread (on a busy 2-core machine a multi-threaded tesseract is
about twice as slow): the PyPI wheel's tesseract is built without OpenMP, and a build with
it is pinned by OMP_THREAD_LIMIT=1 unless the operator set it. Its model is Debian's
tesseract-ocr English data, found on disk: nothing is downloaded at run time.

Sparse-text mode (page segmentation 11): overlays are scattered words, not paragraphs.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from gateway.plugin import PluginError
from gateway.redaction.boxes import Box

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # read when tesseract's OpenMP starts, if it has one
import tesserocr

TESSDATA_GLOBS = ("/usr/share/tesseract-ocr/*/tessdata", "/usr/share/tessdata", "/usr/local/share/tessdata")
_local = threading.local()


@dataclass(frozen=True)
class Word:
    """One recognised word, its box, and the line it belongs to."""

    text: str
    box: Box
    line: tuple[int, ...]
    confidence: float


@cache
def tessdata() -> str | None:
    """The folder holding eng.traineddata: $TESSDATA_PREFIX, else where Debian puts it."""
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for pattern in TESSDATA_GLOBS:
        candidates += sorted(glob.glob(pattern), reverse=True)  # the newest version first
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "eng.traineddata"))), None)


def available() -> bool:
    return tessdata() is not None


def _api() -> tesserocr.PyTessBaseAPI:
    """This thread's recogniser (made once: loading the model is most of a cold call)."""
    api = getattr(_local, "api", None)
    if api is None:
        if not available():
            raise PluginError("OCR redaction needs tesseract's English data (Debian package tesseract-ocr)")
        api = tesserocr.PyTessBaseAPI(path=tessdata(), lang="eng", psm=tesserocr.PSM.SPARSE_TEXT)
        _local.api = api
    return api


def to_8bit(frame: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """The frame stretched to 0..255 (OCR wants contrast, not Hounsfield units).

    ``lo``/``hi`` default to the frame's own range; a crop passes its frame's range so it
    gets the same contrast as the whole frame would.
    """
    img = frame.astype(np.float32)
    lo = float(img.min()) if lo is None else lo
    hi = float(img.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.rint((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read(frame: np.ndarray, scale: int = 2, regions: list[Box] | None = None) -> list[Word]:
    """Words in one grey frame, or only in ``regions`` of it (boxes in frame pixels).

    ``scale`` enlarges small overlay fonts for the recogniser. Each region is recognised
    on its own; its words' lines are told apart from other regions' lines.
    """
    api = _api()
    rows, cols = frame.shape
    lo, hi = float(frame.min()), float(frame.max())
    words: list[Word] = []
    for n, (top, left, bottom, right) in enumerate(regions if regions is not None else [(0, 0, rows, cols)]):
        crop = to_8bit(frame[top:bottom, left:right], lo, hi)
        if crop.size == 0:
            continue
        img = Image.fromarray(crop)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
        api.SetImageBytes(img.tobytes(), img.width, img.height, 1, img.width)
        words += _words(api.GetTSVText(0), scale, top, left, n)
    return words


def _words(tsv: str, scale: int, top: int, left: int, region: int) -> list[Word]:
    """Tesseract's TSV rows of words, in frame pixels (the crop at ``top``, ``left``)."""
    words = []
    names = ("level", "page", "block", "par", "line", "word", "left", "top", "width", "height", "conf", "text")
    for row in csv.DictReader(io.StringIO(tsv), fieldnames=names, delimiter="\t", quoting=csv.QUOTE_NONE):
        text = (row.get("text") or "").strip()
        if row["level"] != "5" or not text:
            continue
        x, y, w, h = (int(row[k]) for k in ("left", "top", "width", "height"))
        box = (top + y // scale, left + x // scale, top - (-(y + h) // scale), left - (-(x + w) // scale))
        line = (region, int(row["block"]), int(row["par"]), int(row["line"]))
        words.append(Word(text, box, line, float(row["conf"])))
    return words
