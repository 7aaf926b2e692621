"""Burned-in text detection on generated images with exact ground truth; prints JSON.

Per detector (rules, roi, tophat, ocr) and combined (what a route with all four blanks),
each also per image kind, and
Microsoft Presidio's DICOM image redactor on the same images when bench/.presidio-venv
exists (bench/presidio_setup.sh builds it):

- recall: share of identifying characters (the header's own name, ID, birth date,
  institution) whose every ink pixel lies in a blanked box;
- nontext_blanked: share of pixels outside every text line that were blanked;
- anatomy_blanked: share of anatomy (body, head, ultrasound fan) pixels outside text
  lines that were blanked;
- images_per_s: with 2 worker processes (2 cores), one OCR thread each, from the mean
  seconds per image in a worker (the pixels read and searched); cpu_ms_per_image is the
  same in CPU time (less sensitive to other jobs on the machine). ``combined`` is one
  search with all four detectors, as a route runs it (OCR reads only the rows the cheap
  detectors point at); ``ocr`` alone reads whole frames;
- unseen: all four detectors on ``--unseen`` images of the next seed, which the detectors
  were not tuned on (recall 0.998 there when they were built);
- clip: a ``--clip-frames``-frame ultrasound cine clip (480x640 RGB) with burned-in
  identity, redacted by the stage with its 2 frame workers: seconds (wall), recall,
  anatomy blanked; and the CPU seconds of the same search in one process.

    .venv/bin/python -m bench.burned_in --images 40
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gateway.deid.deidentify import IDENTITY_KEYWORDS
from gateway.plugin import Context
from gateway.redaction import RedactionStage
from gateway.redaction.boxes import Box, mask_of
from gateway.redaction.ocr_matching import Matcher
from gateway.redaction.pixels import load
from gateway.redaction.stage import boxes_of
from testkit import testimages

DETECTORS = ("rules", "roi", "tophat", "ocr")
PRESIDIO = Path(__file__).parent / ".presidio-venv" / "bin" / "python"


def _identity(ds: object) -> dict[str, str]:
    return {k: str(ds.get(k, "") or "") for k in IDENTITY_KEYWORDS if ds.get(k)}  # type: ignore[attr-defined]


def _detect(args: tuple[int, int]) -> dict[str, tuple[list[Box], float, float]]:
    """Boxes, seconds and CPU seconds per detector (and all combined) for image ``index``
    of the suite made with ``seed``."""
    seed, index = args
    image = testimages.item(index, seed)
    ds = image.dataset
    matcher = Matcher(_identity(ds))
    out = {}
    for name, detectors in [(n, [n]) for n in DETECTORS] + [("combined", list(DETECTORS))]:
        t0, c0 = time.perf_counter(), time.process_time()
        grey = load(ds).grey()
        boxes = RedactionStage(detectors=detectors, workers=1).find(ds, grey, matcher)
        out[name] = (boxes, time.perf_counter() - t0, time.process_time() - c0)
    return out


def _combined(args: tuple[int, int]) -> tuple[list[Box], float, float]:
    """All four detectors on image ``index`` of the suite made with ``seed``: boxes, seconds, CPU seconds."""
    seed, index = args
    ds = testimages.item(index, seed).dataset
    t0, c0 = time.perf_counter(), time.process_time()
    boxes = RedactionStage(workers=1).find(ds, load(ds).grey(), Matcher(_identity(ds)))
    return boxes, time.perf_counter() - t0, time.process_time() - c0


def _unseen(n: int, seed: int, workers: int) -> dict[str, object]:
    """All four detectors on ``n`` images of another seed (not tuned on), as a route runs them."""
    images = testimages.suite(n, seed)
    with ProcessPoolExecutor(workers) as pool:
        found = list(pool.map(_combined, [(seed, i) for i in range(n)]))
    return {"images": n, "seed": seed, **_score(images, [f[0] for f in found]),
            "images_per_s": round(workers / float(np.mean([f[1] for f in found])), 2),
            "cpu_ms_per_image": round(1000 * float(np.mean([f[2] for f in found])), 1)}


def _clip(frames: int, seed: int) -> dict[str, object]:
    """Redact one ultrasound cine clip of ``frames`` frames as a route does (2 frame
    workers), then again in this process alone for its CPU time."""
    image = testimages.make("us_cine", 1000 + seed, frames=frames)
    ctx = Context(b"k" * 32, _identity(image.dataset))
    RedactionStage().protect([testimages.make("us_cine", seed + 1, frames=8).dataset], ctx)  # start the pool
    ds = copy.deepcopy(image.dataset)
    t0 = time.perf_counter()
    [record] = RedactionStage().protect([ds], ctx)
    wall = time.perf_counter() - t0
    c0 = time.process_time()
    RedactionStage(workers=1).protect([copy.deepcopy(image.dataset)], ctx)
    cpu = time.process_time() - c0
    return {"frames": frames, "rows": int(ds.Rows), "cols": int(ds.Columns), "seconds": round(wall, 2),
            "cpu_s_in_one_process": round(cpu, 2), **_score([image], [boxes_of(record)])}


def _score(images: list[testimages.TestImage], boxes: list[list[Box] | None]) -> dict[str, float]:
    hit = total = 0
    nontext, anatomy = [], []
    for image, found in zip(images, boxes, strict=True):
        truth = image.truth
        rows, cols = truth.char_labels.shape
        mask = mask_of(found or [], rows, cols)
        ids = np.nonzero(truth.identifying)[0] + 1
        covered = np.ones(len(truth.identifying) + 1, bool)
        np.logical_and.at(covered, truth.char_labels.ravel(), mask.ravel())
        hit += int(covered[ids].sum())
        total += len(ids)
        nontext.append(mask[~truth.text_region].mean())
        anatomy.append(mask[truth.anatomy].mean())
    return {"recall": round(hit / total, 4), "nontext_blanked": round(float(np.mean(nontext)), 5),
            "anatomy_blanked": round(float(np.mean(anatomy)), 5), "anatomy_blanked_max": round(float(np.max(anatomy)), 5)}


def _presidio(images: list[testimages.TestImage], workers: int) -> dict[str, object]:
    """Presidio in its own virtualenv, file by file in restartable worker processes."""
    if not PRESIDIO.exists():
        return {"error": "bench/.presidio-venv is missing: run bench/presidio_setup.sh"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(images):
            p = Path(tmp) / f"{i:04d}.dcm"
            image.dataset.save_as(p, enforce_file_format=True)
            paths.append(str(p))
        results: dict[str, dict[str, object]] = {}
        shares = [paths[w::workers] for w in range(workers)]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_presidio_run, shares):
                results.update(part)
        wall = time.perf_counter() - t0
    boxes = [results[p].get("boxes") for p in paths]  # type: ignore[union-attr]
    failed = {Path(p).name: results[p]["error"] for p in paths if "error" in results[p]}
    scored = _score(images, boxes)  # type: ignore[arg-type]
    ok = [results[p]["seconds"] for p in paths if "seconds" in results[p]]
    return {**scored, "images_per_s": round(workers / float(np.mean(ok)), 3) if ok else 0.0,
            "wall_s_incl_startup": round(wall, 1), "failed_images": len(failed),
            "failures": sorted({str(v)[:120] for v in failed.values()})}


def _presidio_run(paths: list[str]) -> dict[str, dict[str, object]]:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out: dict[str, dict[str, object]] = {}
    todo = list(paths)
    while todo:
        proc = subprocess.Popen([str(PRESIDIO), str(Path(__file__).parent / "presidio_worker.py")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdin and proc.stdout
        proc.stdout.readline()  # ready
        while todo:
            path = todo[0]
            proc.stdin.write(path + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            todo.pop(0)
            if not line:  # the worker died on this file
                out[path] = {"error": f"worker process died (exit {proc.wait()})"}
                break
            out[path] = json.loads(line)
        proc.stdin.close()
        proc.wait()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-presidio", action="store_true")
    parser.add_argument("--clip-frames", type=int, default=90, help="frames of the cine clip timed (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="another seed: images the detectors were not tuned on")
    parser.add_argument("--unseen", type=int, default=100,
                        help="images of the next seed (not tuned on) searched with all detectors (0: none)")
    args = parser.parse_args()
    os.environ["OMP_THREAD_LIMIT"] = "1"
    images = testimages.suite(args.images, args.seed)
    with ProcessPoolExecutor(args.workers) as pool:
        found = list(pool.map(_detect, [(args.seed, i) for i in range(args.images)]))
    report: dict[str, object] = {"images": args.images, "seed": args.seed, "kinds": list(testimages.KINDS),
                                 "identifying_characters": int(sum(i.truth.identifying.sum() for i in images))}
    single = [i for i, im in enumerate(images) if im.kind != "us_cine"]
    for name in (*DETECTORS, "combined"):
        seconds, cpu = float(np.mean([f[name][1] for f in found])), float(np.mean([f[name][2] for f in found]))
        report[name] = {**_score(images, [f[name][0] for f in found]), "images_per_s": round(args.workers / seconds, 2),
                        "cpu_ms_per_image": round(1000 * cpu, 1)}
    seconds = float(np.mean([found[i]["combined"][1] for i in single]))
    cpu = float(np.mean([found[i]["combined"][2] for i in single]))
    report["combined"] |= {"single_frame_images_per_s": round(args.workers / seconds, 2),  # type: ignore[operator]
                           "single_frame_cpu_ms_per_image": round(1000 * cpu, 1)}
    kinds = {kind: [i for i, im in enumerate(images) if im.kind == kind] for kind in testimages.KINDS}
    per_detector = {name: [f[name][0] for f in found] for name in (*DETECTORS, "combined")}
    report["by_kind"] = {name: {kind: _score([images[i] for i in idx], [boxes[i] for i in idx])
                                for kind, idx in kinds.items()} for name, boxes in per_detector.items()}
    if args.unseen:
        report["unseen"] = _unseen(args.unseen, args.seed + 1, args.workers)
    if args.clip_frames:
        report["clip"] = _clip(args.clip_frames, args.seed)
    if not args.no_presidio:
        report["presidio"] = _presidio(images, args.workers)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
