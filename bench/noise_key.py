"""noise_key benchmark: how much leaks per strength, what a lossy copy recovers, speed.

    .venv/bin/python bench/noise_key.py [--strengths 0.01 0.03 0.1 0.3 1.0] [--slices 2]

Needs the bench extra (imagecodecs, scikit-image) and pydicom-data. Prints JSON:
per image (synthetic CT phantom slices from testkit/synthetic.py at seed 0, never used in
training; pydicom-data's 512x512 CT 693_UNCI and 484x484 MR, also held out) and per
strength:

- ``leak``: the protected pixels as stored (what the PACS and anyone without the key
  hold) against the original, and ``leak_blurred``: what an attacker gets by unwrapping
  them around their emptiest stretch and blurring (Gaussian, sigma 2 px); for additive
  noise blurring is the classic way to see through it. ``leak_circular_r``: a stronger
  attack on wrapped noise: the circular mean (mean of exp(2 pi i p / 2**bits)) over 32x32
  blocks, whose angle estimates each block's mean value however much the noise wraps;
  its Pearson r with the original's block means (225-256 blocks per image, so |r| below
  about 0.15 is chance). Theory: the
  wrapped noise keeps exp(-2 pi^2 strength^2) of the signal in that mean: 0.14 at 0.3,
  0.007 at 0.5, 3e-9 at 1.0, so 0.5 still yields coarse blocks to an attacker averaging
  about 10^4 pixels per block; 1.0 does not.
- ``jpeg_qNN``: the protected copy JPEG-compressed (12-bit JPEG, 8-bit for 8-bit data),
  then unpacked with the key (``subtract``: minus the keyed noise, unwrapped), then
  ``smoothed`` (Gaussian, sigma 0.7 px: a classical baseline) or ``denoised`` (the shipped
  network, told the copy's error sd read from its JPEG quantisation tables); ``error_sd``
  is that sd in stored units. ``plain_jpeg`` is the unprotected original through the
  same JPEG, for scale.
- ``rescaled_half``: the protected copy downscaled 2x (2x2 means, as a thumbnail or a
  PACS's reduced copy would), minus the keyed noise downscaled the same way, unwrapped,
  against the original downscaled 2x. The wrap is not linear: it only works while the
  noise rarely wraps.
- ``exact``: the plugin's restore of the unaltered protected copy equals the original.

Metrics (the paper does not define its own; these are the usual definitions, computed
on images scaled by the original's min..max to 0..1): SNR dB = 10 log10(sum ref^2 /
sum (test - ref)^2); SSIM (scikit-image, data range 1); ER = mean squared error; CNR % =
100 * CNR(test) / CNR(original), CNR = |mean_fg - mean_bg| / sqrt((var_fg + var_bg) / 2)
with foreground/background split by Otsu's threshold on the original.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.plugin import Context
from models.noise_key_denoiser import denoise, load
from models.training.noise_key_data import image_dataset, jpeg_copy, run
from plugins.noise_key import NoiseKeyTransform
from plugins.noise_key.unpack import unwrap
from testkit import synthetic

PAPER = {"SNR_dB": 24.3165, "SSIM": 0.973, "ER": 0.001, "CNR_pct": 42.2}
REAL = {"ct_head_693_UNCI": "693_UNCI.dcm", "mr_abdomen_siemens": "MR-SIEMENS-DICOM-WithOverlays.dcm"}


def metrics(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    lo, hi = float(ref.min()), float(ref.max())
    r, t = (ref - lo) / (hi - lo), (test - lo) / (hi - lo)
    err = float(np.sum((t - r) ** 2))
    fg = ref > threshold_otsu(ref)
    return {
        "SNR_dB": round(10 * np.log10(float(np.sum(r**2)) / err), 2) if err else float("inf"),
        "SSIM": round(float(structural_similarity(r, t, data_range=1.0)), 4),
        "ER": round(err / r.size, 6),
        "CNR_pct": round(100 * _cnr(t, fg) / _cnr(r, fg), 1),
    }


def _cnr(img: np.ndarray, fg: np.ndarray) -> float:
    a, b = img[fg], img[~fg]
    return abs(float(a.mean() - b.mean())) / float(np.sqrt((a.var() + b.var()) / 2) or 1e-12)


def images(slices: int) -> dict[str, tuple[np.ndarray, int, bool]]:
    out = {}
    for i, ds in enumerate(synthetic.ct_series(slices, size=512, seed=0)):
        out[f"synthetic_ct_{i}"] = (np.frombuffer(ds.PixelData, "<u2").reshape(512, 512).astype(np.int64), 12, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, name in REAL.items():
            path = get_testdata_file(name)
            if path is None:
                raise SystemExit(f"{name} is missing: pip install pydicom-data")
            ds = pydicom.dcmread(path)
            out[label] = (ds.pixel_array.astype(np.int64), int(ds.BitsStored), ds.PixelRepresentation == 1)
    return out


def bench_image(values: np.ndarray, bits: int, signed: bool, strengths: list[float], qualities: list[int],
                model: torch.nn.Module, times: dict[str, list[float]]) -> dict[str, object]:
    ctx = Context(series_key=b"\x42" * 32)
    ref = values.astype(np.float64)
    result: dict[str, object] = {"shape": list(values.shape), "bits_stored": bits, "signed": signed,
                                 "plain_jpeg": {f"q{q}": metrics(ref, _plain_jpeg(values, bits, signed, q))
                                                for q in qualities}}
    for strength in strengths:
        row: dict[str, object] = {"exact": _exact(values, bits, signed, strength, ctx, times)}
        exact = run(values, bits, signed, strength, None, ctx)
        row["leak"] = metrics(ref, exact.protected.astype(np.float64))
        attacker = gaussian_filter(unwrap(exact.protected, 1 << bits, signed), 2.0)
        row["leak_blurred"] = metrics(ref, attacker) | {"pearson_r": round(float(np.corrcoef(
            attacker.ravel(), ref.ravel())[0, 1]), 3)}
        modulus = 1 << bits
        row["leak_circular_r"] = _circular_leak(ref, exact.protected, modulus, signed)
        row["rescaled_half"] = metrics(_half(ref), unwrap(_half(exact.protected) - _half(exact.noise), modulus, signed))
        for q in qualities:
            lossy = run(values, bits, signed, strength, q, ctx)
            start = time.perf_counter()
            cleaned = denoise(model, lossy.unpacked, bits, lossy.error_sd)
            times["denoise_s"].append(time.perf_counter() - start)
            row[f"jpeg_q{q}"] = {"error_sd": round(lossy.error_sd, 2), "subtract": metrics(ref, lossy.unpacked),
                                 "smoothed": metrics(ref, gaussian_filter(lossy.unpacked, 0.7)),
                                 "denoised": metrics(ref, cleaned)}
        result[f"strength_{strength}"] = row
    return result


def _circular_leak(ref: np.ndarray, protected: np.ndarray, modulus: int, signed: bool, block: int = 32) -> float:
    h, w = ref.shape[0] // block * block, ref.shape[1] // block * block
    blocks = (h // block, block, w // block, block)
    phase = np.exp(2j * np.pi * protected[:h, :w] / modulus).reshape(blocks).mean(axis=(1, 3))
    guess = unwrap(np.angle(phase) / (2 * np.pi) * modulus, modulus, signed)
    truth = ref[:h, :w].reshape(blocks).mean(axis=(1, 3))
    return round(float(np.corrcoef(guess.ravel(), truth.ravel())[0, 1]), 3)


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return img[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _plain_jpeg(values: np.ndarray, bits: int, signed: bool, quality: int) -> np.ndarray:
    modulus = 1 << bits
    return unwrap(jpeg_copy(np.mod(values, modulus), bits, quality)[0], modulus, signed)


def _exact(values: np.ndarray, bits: int, signed: bool, strength: float, ctx: Context,
           times: dict[str, list[float]]) -> bool:
    ds = image_dataset(values, bits, signed)
    original = bytes(ds.PixelData)
    start = time.perf_counter()
    records = NoiseKeyTransform(strength).protect([ds], ctx)
    middle = time.perf_counter()
    NoiseKeyTransform().restore([ds], records, ctx)
    times["protect_s"].append(middle - start)
    times["restore_s"].append(time.perf_counter() - middle)
    return bytes(ds.PixelData) == original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 0.5, 1.0])
    parser.add_argument("--qualities", type=int, nargs="+", default=[50, 90])
    parser.add_argument("--slices", type=int, default=2, help="synthetic CT slices")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load()
    times: dict[str, list[float]] = {"protect_s": [], "restore_s": [], "denoise_s": []}
    results = {name: bench_image(v, b, s, args.strengths, args.qualities, model, times)
               for name, (v, b, s) in images(args.slices).items()}
    print(json.dumps({
        "paper_reported": PAPER,
        "images": results,
        "seconds_per_image": {k: round(float(np.median(v)), 4) for k, v in times.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
    }, indent=1))


if __name__ == "__main__":
    main()
