"""Text detection and recognition with Debian's tesseract-ocr (5.x, English model).

Tesseract runs as a subprocess on an 8-bit PNG of the frame, in sparse-text mode (page
segmentation 11: overlays are scattered words, not paragraphs), one OpenMP thread
(on a busy 2-core machine a multi-threaded tesseract is about twice as slow). Its models
come with the Debian package: nothing is downloaded at run time.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gateway.plugin import PluginError
from gateway.redaction.boxes import Box

TESSERACT = "tesseract"


@dataclass(frozen=True)
class Word:
    """One recognised word, its box, and the line it belongs to."""

    text: str
    box: Box
    line: tuple[int, int, int]
    confidence: float


def available() -> bool:
    return shutil.which(TESSERACT) is not None


def to_8bit(frame: np.ndarray) -> np.ndarray:
    """The frame stretched to 0..255 (OCR wants contrast, not Hounsfield units)."""
    img = frame.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.rint((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read(frame: np.ndarray, scale: int = 2, timeout: float = 60.0) -> list[Word]:
    """Words in one grey frame. ``scale`` enlarges small overlay fonts for the recogniser."""
    if not available():
        raise PluginError("OCR redaction needs tesseract (Debian package tesseract-ocr)")
    img = Image.fromarray(to_8bit(frame))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    try:
        result = subprocess.run([TESSERACT, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
                                input=buf.getvalue(), capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise PluginError("OCR timed out") from None
    if result.returncode != 0:
        raise PluginError(f"OCR failed (tesseract exit status {result.returncode})")
    words = []
    for row in csv.DictReader(io.StringIO(result.stdout.decode("utf-8", "replace")), delimiter="\t",
                              quoting=csv.QUOTE_NONE):
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        left, top = int(row["left"]) // scale, int(row["top"]) // scale
        right = -(-(int(row["left"]) + int(row["width"])) // scale)
        bottom = -(-(int(row["top"]) + int(row["height"])) // scale)
        line = (int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))
        words.append(Word(text, (top, left, bottom, right), line, float(row["conf"])))
    return words
