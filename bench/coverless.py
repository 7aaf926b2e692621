"""Coverless transform figures (issues 5 and 17), printed as JSON.

- table1: for every attack of the paper's Table 1, the paper's bit and block accuracy
  (eqs. 16-18) beside ours on the paper's setting (method 1, the paper's features, computed
  at 512x512 on 8-bit slices attacked as 8-bit images), the same accuracies for method 2's
  rows, and whether the identity of a long series (600 slices by default) demapped exactly
  through the real plugin (method 2: cells with a vote, digest-checked) from the attacked
  images; wrong identities are counted (they must be 0). A PNG plot beside it: block
  accuracy per attack, paper against ours (``--plot PATH``, else a temporary folder);
- restore success rate over series with random identities: exact, failure reported, wrong
  (must be 0), for untouched pixels and for changed pixels;
- seconds per series (protect and restore, 600 slices of 512x512) and where the time goes;
- ``--stages``: the diagnosis of plugins/coverless/README.md (one attack followed stage by
  stage through method 1).

Attacks act on the 8-bit rendering of each 512x512 slice (the paper's images were 8-bit);
noise parameters follow MATLAB's imnoise as the paper used it (a variance, not a sigma). The
attacked 8-bit slices reach the plugin as 8-bit DICOM images with the original geometry.

    .venv/bin/python -m bench.coverless --plot /tmp/coverless_table1.png   # full: 600 slices
    .venv/bin/python -m bench.coverless --quick                            # about 3 minutes
    .venv/bin/python -m bench.coverless --stages jpeg 50

The plot needs matplotlib (``pip install .[bench]``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import string
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from copy import deepcopy
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage
from threadpoolctl import threadpool_limits

from gateway.plugin import Context, PluginError
from plugins.coverless import CoverlessTransform, hashing, intensity_features, ordering, series_table
from plugins.coverless.body_roi import otsu_threshold, roi_filtered
from plugins.coverless.features import image_features, one_blas_thread
from plugins.coverless.lbp_features import feature_rows, lbp
from plugins.coverless.rpca import low_rank
from plugins.coverless.series_table import WORKING_SIZE, working_images
from plugins.coverless.working_image import render8, resample
from testkit import synthetic

# Paper, Table 1: attack -> (bit accuracy, block accuracy).
PAPER_TABLE1 = {
    "gaussian_noise 0.01": (0.9863, 0.8814), "gaussian_noise 0.005": (0.9908, 0.9204),
    "gaussian_noise 0.001": (0.9934, 0.9423), "speckle 0.01": (0.9932, 0.9407),
    "speckle 0.005": (0.9938, 0.9454), "speckle 0.001": (0.9945, 0.9516),
    "salt_pepper 0.01": (0.9938, 0.9454), "salt_pepper 0.005": (0.9941, 0.9501),
    "salt_pepper 0.001": (0.9955, 0.9641), "median 3x3": (0.9922, 0.9329), "median 5x5": (0.9882, 0.9329),
    "median 7x7": (0.9816, 0.8424), "mean 3x3": (0.9638, 0.7239), "mean 5x5": (0.9683, 0.7598),
    "mean 7x7": (0.9657, 0.7161), "gaussian_filter 3x3": (0.9939, 0.9501),
    "gaussian_filter 5x5": (0.9939, 0.9470), "gaussian_filter 7x7": (0.9941, 0.9485),
    "intensity_gamma 0.5": (0.9889, 0.9048), "intensity_gamma 0.7": (0.9905, 0.9142),
    "intensity_gamma 1.3": (0.9743, 0.8003), "edge_crop 10%": (0.9853, 0.8705), "edge_crop 20%": (0.9685, 0.7504),
    "rotate 10": (0.8851, 0.2839), "rotate 20": (0.8005, 0.1045), "scale 0.3": (0.9825, 0.8518),
    "scale 0.5": (0.9898, 0.9111), "scale 1.5": (0.9889, 0.9033), "gamma_correction 0.8": (0.9794, 0.8268),
    "gamma_correction 0.9": (0.9873, 0.8924), "jpeg Q10": (0.9936, 0.9423), "jpeg Q50": (0.9938, 0.9485),
}
# --quick: one of each kind the issue requires to demap, and the two hardest
QUICK_ATTACKS = ("gaussian_noise 0.01", "median 7x7", "gaussian_filter 7x7", "intensity_gamma 0.5",
                 "gamma_correction 0.8", "scale 0.5", "edge_crop 10%", "jpeg Q10", "jpeg Q50", "rotate 10")


# -- attacks on an 8-bit image (top-level functions so worker processes can run them) -------


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def attack(img8: np.ndarray, kind: str, value: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = img8.astype(np.float64) / 255
    if kind == "gaussian_noise":  # imnoise(I, 'gaussian', 0, v)
        return _to8(x + rng.normal(0, np.sqrt(value), x.shape))
    if kind == "speckle":  # imnoise(I, 'speckle', v): uniform noise of variance v, times I
        return _to8(x + x * rng.uniform(-0.5, 0.5, x.shape) * np.sqrt(12 * value))
    if kind == "salt_pepper":  # imnoise(I, 'salt & pepper', d)
        out = img8.copy()
        hit = rng.random(x.shape) < value
        out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)
        return out
    if kind == "median":
        return ndimage.median_filter(img8, size=int(value))
    if kind == "mean":
        return _to8(ndimage.uniform_filter(x, size=int(value)))
    if kind == "gaussian_filter":  # fspecial('gaussian', [k k], 0.5)
        return _to8(ndimage.gaussian_filter(x, sigma=0.5, truncate=(int(value) // 2) / 0.5))
    if kind in ("intensity_gamma", "gamma_correction"):
        return _to8(x ** value)
    if kind == "edge_crop":  # the outer band (value of the width and height in all) blacked out
        out = img8.copy()
        band_y, band_x = int(img8.shape[0] * value / 2), int(img8.shape[1] * value / 2)
        out[:band_y], out[-band_y:], out[:, :band_x], out[:, -band_x:] = 0, 0, 0, 0
        return out
    if kind == "rotate":
        return _to8(ndimage.rotate(x, value, reshape=False, order=1))
    if kind == "scale":
        return _to8(ndimage.zoom(x, value, order=1))
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img8).save(buf, format="JPEG", quality=int(value))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    raise ValueError(kind)


ATTACKS = [(name, name.split()[0], float(name.split()[1].strip("%xQ").split("x")[0]) / (100 if "%" in name else 1))
           for name in PAPER_TABLE1]


def both_features(img8: np.ndarray, kind: str | None = None, value: float = 0.0, seed: int = 7) -> tuple:
    """Method 1 at the paper's resolution (the 8-bit 512x512 image itself) and method 2 at
    the working size, of the image after the attack (none when ``kind`` is None)."""
    img = img8 if kind is None else attack(img8, kind, value, seed)
    return image_features(img), intensity_features.feature_rows(resample(img, WORKING_SIZE))


def attacked_dataset(item: tuple, kind: str, value: float, seed: int = 7) -> Dataset:
    """The attacked 8-bit slice as an 8-bit DICOM image with the original geometry."""
    img8, position, orientation, number = item
    pixels = attack(img8, kind, value, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.InstanceNumber = position, orientation, number
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool): on a machine
    shared with other jobs, wall time overstates the cost; CPU / workers estimates it alone."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _bits(hashes: np.ndarray) -> np.ndarray:
    return (hashes[:, None] >> np.arange(hashing.BITS - 1, -1, -1)) & 1


def _accuracy(clean: np.ndarray, attacked: np.ndarray, window: int) -> tuple[float, float]:
    """Bit and block accuracy (eqs. 16-18) of the 9-bit rows of two feature stacks."""
    a = hashing.row_hashes(hashing.window_differences(clean, window)).hashes
    b = hashing.row_hashes(hashing.window_differences(attacked, window)).hashes
    return round(float((_bits(a) == _bits(b)).mean()), 4), round(float((a == b).mean()), 4)


# -- figures ------------------------------------------------------------------------------


def paper_setting(pool: ProcessPoolExecutor, slices: int, attacks: list) -> dict:  # type: ignore[type-arg]
    """Bit and block accuracy per attack on the paper's setting (8-bit 512x512 slices of
    one series, neighbouring slices), method 1 and method 2's rows."""
    series = synthetic.ct_series(slices, 512, seed=21)
    order = ordering.geometry_order(series)
    assert order is not None
    full8 = [render8(series[i]) for i in order]
    clean1, clean2 = (np.stack(f) for f in zip(*pool.map(both_features, full8), strict=True))
    window = series_table.window(1000)  # the long-series window (the identity series uses it)
    out = {}
    for name, kind, value in attacks:
        f1, f2 = (np.stack(f) for f in zip(*pool.map(partial(both_features, kind=kind, value=value), full8),
                                            strict=True))
        bit1, block1 = _accuracy(clean1, f1, 1)
        bit2, block2 = _accuracy(clean2, f2, 1)
        bitw, blockw = _accuracy(clean2, f2, window) if slices > 2 * window else (None, None)
        out[name] = {"paper_bit": PAPER_TABLE1[name][0], "paper_block": PAPER_TABLE1[name][1],
                     "method1_bit": bit1, "method1_block": block1,
                     "method2_rows_bit": bit2, "method2_rows_block": block2,
                     f"method2_window{window}_rows_bit": bitw, f"method2_window{window}_rows_block": blockw}
    return out


def identity_under_attack(pool: ProcessPoolExecutor, slices: int, attacks: list, workers: int) -> dict:  # type: ignore[type-arg]
    """Protect one long series with a random identity, attack every slice, restore through
    the plugin: exact, failure reported, or wrong (must never happen)."""
    series = synthetic.ct_series(slices, 512, seed=31)
    identity = random_identity(random.Random(17))
    plugin = CoverlessTransform(workers=workers)
    key = b"a" * 32
    records = plugin.protect(series, Context(series_key=key, identity=dict(identity)))
    items = [(render8(ds), ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.InstanceNumber) for ds in series]
    out = {}
    started = time.perf_counter()
    for name, kind, value in attacks:
        attacked = list(pool.map(partial(attacked_dataset, kind=kind, value=value), items, chunksize=16))
        back = Context(series_key=key)
        try:
            plugin.restore(attacked, records, back)
        except PluginError:
            out[name] = "failure_reported"
            continue
        out[name] = "exact" if back.identity == identity else "wrong_identity"
    return {"series": f"synthetic CT, {slices} slices of 512x512, ordered by geometry",
            "seconds_per_attack": round((time.perf_counter() - started) / max(1, len(attacks)), 1),
            "identity_values": len(identity), "identity_utf8_bytes": sum(len(v.encode()) for v in identity.values()),
            "outcomes": out}


def plot_table1(rows: dict, identity: dict, plot: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    window_key = next(k for k in rows[names[0]] if k.startswith("method2_window") and k.endswith("_block"))
    fig, ax = plt.subplots(figsize=(13, 5))
    ax.bar(x - 0.3, [rows[n]["paper_block"] for n in names], 0.2, label="paper (Table 1)")
    ax.bar(x - 0.1, [rows[n]["method1_block"] for n in names], 0.2, label="ours, paper's method and setting")
    ax.bar(x + 0.1, [rows[n]["method2_rows_block"] for n in names], 0.2, label="method 2 rows, neighbours")
    window = window_key.removeprefix("method2_window").split("_")[0]
    ax.bar(x + 0.3, [rows[n][window_key] or 0 for n in names], 0.2, label=f"method 2 rows, {window}-slice windows")
    for i, n in enumerate(names):
        outcome = identity["outcomes"].get(n)
        if outcome:
            ax.text(i, 1.02, "✓" if outcome == "exact" else "✗", ha="center", fontsize=9,
                    color="green" if outcome == "exact" else "red")
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("block accuracy")
    ax.set_title(f"Coverless block accuracy per attack (✓/✗: identity of {identity['series'].split(',')[1].strip()} "
                 "demapped exactly / failure reported)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", ncol=4)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=100)


def stages(kind: str, value: float, slices: int, size: int) -> dict:  # type: ignore[type-arg]
    """Method 1 followed stage by stage: how much of the clean result survives the attack."""
    series = synthetic.ct_series(slices, 512, seed=21)
    order = ordering.geometry_order(series)
    assert order is not None
    full8 = [render8(series[i]) for i in order]

    def run(img: np.ndarray) -> tuple:  # type: ignore[type-arg]
        w = resample(img, size)
        roi = roi_filtered(w)
        m = low_rank(roi)
        return w, w > otsu_threshold(w), roi, m, lbp(m), feature_rows(m)

    clean = [run(f) for f in full8]
    hit = [run(attack(f, kind, value, 7)) for f in full8]

    def mean(stage: int, how: str) -> float:
        pairs = [(a[stage], c[stage]) for a, c in zip(hit, clean, strict=True)]
        if how == "equal":
            return round(float(np.mean([(a == c).mean() for a, c in pairs])), 4)
        return round(float(np.mean([np.abs(a.astype(np.int64) - c).mean() for a, c in pairs])), 3)

    fc, fa = np.stack([c[5] for c in clean]), np.stack([a[5] for a in hit])
    dc, da = hashing.difference_matrix(fc), hashing.difference_matrix(fa)
    bit, block = _accuracy(fc, fa, 1)
    return {"series": f"synthetic CT, {slices} slices, 512x512 8-bit, attack {kind} {value}, features at {size}",
            "working_image_mean_abs_change": mean(0, "abs"), "roi_mask_agreeing": mean(1, "equal"),
            "roi_median_pixels_equal": mean(2, "equal"), "low_rank_pixels_equal": mean(3, "equal"),
            "lbp_codes_equal": mean(4, "equal"),
            "difference_matrix_mean_abs_change": round(float(np.abs(da - dc).mean())),
            "difference_matrix_mean_abs_from_row_mean": round(float(np.abs(dc - dc.mean(1, keepdims=True)).mean())),
            "bit_accuracy": bit, "block_accuracy": block}


def random_identity(rng: random.Random) -> dict[str, str]:
    def name() -> str:
        return "^".join(rng.choice(["O'NEIL", "SMITH-JONES", "DU PONT", "MÜLLER", "LEE", "NGUYEN", "ROE"]) if i == 0
                        else rng.choice(["ANN", "JO", "MARY.", "PAUL", "X"]) for i in range(rng.randint(2, 3)))

    return {
        "PatientName": name(), "PatientID": f"{rng.choice('ABZ')}{rng.randint(0, 10**7):07d}-{rng.randint(0, 99)}",
        "PatientBirthDate": f"19{rng.randint(10, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        "PatientSex": rng.choice("MFO"), "PatientAge": f"{rng.randint(1, 99):03d}Y",
        "AccessionNumber": "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(10)),
        "InstitutionName": rng.choice(["St. Mary's Hospital", "General & Co, Ward 3", "Clinic/Nord"]),
        "ReferringPhysicianName": name(),
    }


def _changed(series: list, sd: float, seed: int) -> list:  # type: ignore[type-arg]
    """Copies with Gaussian noise of ``sd`` stored-value units added to every third slice."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ds in enumerate(series):
        copy = deepcopy(ds)
        if i % 3 == 0:
            pixels = ds.pixel_array.astype(np.float64) + rng.normal(0, sd, (ds.Rows, ds.Columns))
            copy.PixelData = np.clip(np.rint(pixels), 0, 4095).astype(np.uint16).tobytes()
        out.append(copy)
    return out


def restore_rates(count: int, slices: int, workers: int) -> dict:  # type: ignore[type-arg]
    rng = random.Random(5)
    plugin = CoverlessTransform(workers=workers)
    conditions = {"untouched pixels": None, "noise sd 2 on every third slice": 2.0,
                  "noise sd 20 on every third slice": 20.0}
    tally = {c: {"exact": 0, "failure_reported": 0, "wrong_identity": 0, "not_demapped": 0} for c in conditions}
    carried = sealed = 0
    for number in range(count):
        series = synthetic.ct_series(slices, 256, seed=100 + number)
        identity = random_identity(rng)
        key = os.urandom(32)
        records = plugin.protect(series, Context(series_key=key, identity=dict(identity)))
        record = json.loads(next(r for r in records if r))
        carried, sealed = carried + len(record["rows"]), sealed + len(record["sealed"])
        for condition, sd in conditions.items():
            received = series if sd is None else _changed(series, sd, number)
            back = Context(series_key=key)
            try:
                plugin.restore(received, records, back)
            except PluginError:
                tally[condition]["failure_reported"] += 1
                continue
            outcome = ("exact" if back.identity == identity
                       else "not_demapped" if not back.identity else "wrong_identity")
            tally[condition][outcome] += 1
    return {"series": f"{count} synthetic CT series of {slices} slices 256x256, random identities (8 values each)",
            "values_carried_as_rows": carried, "values_sealed_by_fallback": sealed,
            "outcomes": tally,
            "wrong_identity_total": sum(t["wrong_identity"] for t in tally.values())}


def timing(slices: int, workers: int) -> dict:  # type: ignore[type-arg]
    identity = {"PatientName": "DOE^JANE^Q", "PatientID": "PID-4711-0815", "PatientBirthDate": "19610412",
                "PatientSex": "F", "AccessionNumber": "ACC20240517"}
    plugin = CoverlessTransform(workers=workers)
    series = synthetic.ct_series(slices, 512, seed=31)
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    records = plugin.protect(series, Context(series_key=b"t" * 32, identity=dict(identity)))
    protect_s, protect_cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    started = time.perf_counter()
    back = Context(series_key=b"t" * 32)
    plugin.restore(series[::-1], records[::-1], back)
    restore_s = time.perf_counter() - started
    assert back.identity == identity
    t0 = time.perf_counter()
    images = working_images(series)
    t1 = time.perf_counter()
    order = ordering.geometry_order(series)
    assert order is not None
    table = series_table.cells_from_images(images, order, "geometry", series_table.window(slices), workers)
    t2 = time.perf_counter()
    return {f"{slices}x512x512": {
        "protect_s": round(protect_s, 2), "restore_s": round(restore_s, 2),
        "protect_cpu_s_all_processes": round(protect_cpu, 2),
        "steps_s": {"decode_and_window": round(t1 - t0, 2), "features_and_cells": round(t2 - t1, 2)},
        "cells": len(table.values), "record_bytes": max(len(r) for r in records)}}


def head_ct() -> dict:  # type: ignore[type-arg]
    """pydicom-data's 512x512 head CT: one image, so no neighbouring pair and no table."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_UNCR.dcm")
    if path is None:
        return {"skipped": "pydicom-data is not installed"}
    ds = pydicom.dcmread(path)
    records = CoverlessTransform().protect([ds], Context(series_key=b"h" * 32, identity={"PatientName": "X^Y"}))
    record = json.loads(records[0])
    return {"file": "693_UNCR.dcm", "images": 1, "values_carried_as_rows": len(record["rows"]),
            "values_sealed_by_fallback": len(record["sealed"]),
            "why": "the paper's hashes are differences of neighbouring images; one image has none"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller series and a few attacks (minutes)")
    parser.add_argument("--plot", type=Path, help="where to write the block accuracy PNG")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--paper-slices", type=int, help="slices for the paper's setting (default 40; quick 20)")
    parser.add_argument("--identity-slices", type=int, help="slices of the attacked series (default 600; quick 150)")
    parser.add_argument("--attacks", help="comma-separated attack names of Table 1 (default all)")
    parser.add_argument("--stages", nargs=2, metavar=("KIND", "VALUE"), help="only the stage-by-stage diagnosis")
    args = parser.parse_args()
    threadpool_limits(1)
    if args.stages:
        for size in (256, 512):
            print(json.dumps(stages(args.stages[0], float(args.stages[1]), 30, size), indent=1))
        return
    quick = args.quick
    chosen = args.attacks.split(",") if args.attacks else None
    attacks = [a for a in ATTACKS if (a[0] in chosen if chosen else not quick or a[0] in QUICK_ATTACKS)]
    plot = args.plot or Path(tempfile.mkdtemp(prefix="coverless-")) / "table1_block_accuracy.png"
    result: dict = {"cpu_count": os.cpu_count(), "workers": args.workers, "quick": quick}  # type: ignore[type-arg]
    started = time.perf_counter()
    result["seconds_per_series"] = timing(150 if quick else 600, args.workers)
    result["target"] = "600 slices of 512x512: protect and restore each in at most 30 s on 2 cores"
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=one_blas_thread) as pool:
        rows = paper_setting(pool, args.paper_slices or (20 if quick else 40), attacks)
        identity = identity_under_attack(pool, args.identity_slices or (150 if quick else 600), attacks, args.workers)
    for name, outcome in identity["outcomes"].items():
        rows[name]["identity_exact"] = outcome == "exact"
    means = {k: round(float(np.mean(v)), 4) if (v := [r[k] for r in rows.values() if r[k] is not None]) else None
             for k in next(iter(rows.values())) if k != "identity_exact"}
    outcomes = list(identity["outcomes"].values())
    result["table1"] = {"paper_setting": "synthetic CT, one series, 8-bit 512x512 slices, attacks on the 8-bit images",
                        "identity_series": identity["series"], "identity_values": identity["identity_values"],
                        "identity_utf8_bytes": identity["identity_utf8_bytes"],
                        "identity_seconds_per_attack": identity["seconds_per_attack"],
                        "identity_exact": outcomes.count("exact"), "identity_failure_reported":
                        outcomes.count("failure_reported"), "wrong_identities": outcomes.count("wrong_identity"),
                        "mean_over_attacks": means, "attacks": rows, "plot": str(plot)}
    plot_table1(rows, identity, plot)
    result["restore"] = restore_rates(3 if quick else 8, 40 if quick else 60, args.workers)
    result["pydicom_head_ct"] = head_ct()
    result["load_average_at_end"] = os.getloadavg()
    result["bench_seconds"] = round(time.perf_counter() - started)
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
