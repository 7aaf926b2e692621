"""Train the noise_key edge denoiser (writes models/noise_key_denoiser.pt).

    .venv/bin/python -m models.training.train_noise_key_denoiser [--steps 1500]

Data: synthetic CT phantom slices (``testkit.synthetic``, seeds 1000+, never the
benchmark's) and real pydicom-data images of at least 12 bits that the benchmark does not
use (CT_small, eCT_Supplemental, MR2_UNCI, RG1_UNCI crops). Each goes through the real
pipeline (``models.training.noise_key_data.run``): protected by the plugin at a random strength
(log-uniform 0.01..1) under a random key, copied as JPEG at a random quality (30..98),
unpacked with the key. The network learns (unpacked, the copy's error sd read from its
quantisation tables) -> original on 64x64 crops.
CPU, one thread, seeded: about 7 minutes on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file

from gateway.plugin import Context
from models.noise_key_denoiser import WEIGHTS_FILE, NoiseKeyDenoiser, scale_of
from models.training.noise_key_data import run
from testkit import synthetic

REAL = ("CT_small.dcm", "eCT_Supplemental.dcm", "MR2_UNCI.dcm", "RG1_UNCI.dcm")
CROP = 64
Pair = tuple[np.ndarray, float, np.ndarray]


def real_images() -> list[tuple[np.ndarray, int, bool]]:
    """(stored values, BitsStored, signed) of the real training images, 512 px at most."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in REAL:
            path = get_testdata_file(name)
            if path is None:
                raise SystemExit(f"{name} is missing: pip install pydicom-data")
            ds = pydicom.dcmread(path)
            frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
            for frame in frames:
                for top in range(0, max(ds.Rows - 511, 1), 512):
                    for left in range(0, max(ds.Columns - 511, 1), 512):
                        out.append((frame[top:top + 512, left:left + 512].astype(np.int64), int(ds.BitsStored),
                                    ds.PixelRepresentation == 1))
    return out


def synthetic_images(count: int, seed: int) -> list[tuple[np.ndarray, int, bool]]:
    rng = np.random.default_rng(seed)
    return [(synthetic.phantom_slice(float(rng.uniform()), 512, seed=int(seed + i)).astype(np.int64) + 1024, 12, False)
            for i in range(count)]


def degraded(images: list[tuple[np.ndarray, int, bool]], rng: np.random.Generator,
             quality: int | None = None, strength: float | None = None) -> list[Pair]:
    """(network input, error sd, target) in network units, one per image."""
    pairs = []
    for values, bits, signed in images:
        ctx = Context(series_key=rng.bytes(32))
        s = strength if strength is not None else float(10 ** rng.uniform(-2, 0))
        q = quality if quality is not None else int(rng.integers(30, 99))
        scale = scale_of(bits)
        result = run(values, bits, signed, s, q, ctx)
        pairs.append(((result.unpacked / scale).astype(np.float32), result.error_sd / scale,
                      (values / scale).astype(np.float32)))
    return pairs


def batch(pairs: list[Pair], size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    xs, levels, ys = [], [], []
    for _ in range(size):
        x, level, y = pairs[int(rng.integers(len(pairs)))]
        levels.append(level)
        top, left = int(rng.integers(x.shape[0] - CROP + 1)), int(rng.integers(x.shape[1] - CROP + 1))
        cx, cy = x[top:top + CROP, left:left + CROP], y[top:top + CROP, left:left + CROP]
        if rng.uniform() < 0.5:
            cx, cy = cx[:, ::-1], cy[:, ::-1]
        xs.append(cx.copy())
        ys.append(cy.copy())
    return (torch.from_numpy(np.stack(xs))[:, None], torch.tensor(levels, dtype=torch.float32),
            torch.from_numpy(np.stack(ys))[:, None])


def rmse(pairs: list[Pair], model: NoiseKeyDenoiser | None) -> float:
    errors = []
    with torch.no_grad():
        for x, level, y in pairs:
            out = x if model is None else model(torch.from_numpy(x)[None, None], torch.tensor([level]))[0, 0].numpy()
            errors.append(np.mean((out - y) ** 2))
    return float(np.sqrt(np.mean(errors)) * scale_of(12))  # in 12-bit units (HU for the phantom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pool", type=int, default=96, help="synthetic training slices")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    start = time.time()
    train = degraded(synthetic_images(args.pool, 1000) + real_images(), rng)
    held_out = synthetic_images(4, 900_000)
    val = {q: degraded(held_out, rng, quality=q, strength=1.0) for q in (50, 90, 97)}
    print(f"{len(train)} training images prepared in {time.time() - start:.0f} s", flush=True)

    model = NoiseKeyDenoiser()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    for step in range(1, args.steps + 1):
        x, level, y = batch(train, args.batch, rng)
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, level), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps:
            model.eval()
            report = ", ".join(f"Q{q} {rmse(p, None):.2f} -> {rmse(p, model):.2f}" for q, p in val.items())
            model.train()
            print(f"step {step}: loss {loss.item():.2e}; held-out RMSE subtract-only -> denoised: {report} "
                  f"({time.time() - start:.0f} s)", flush=True)
    torch.save(model.state_dict(), WEIGHTS_FILE)
    print(f"wrote {WEIGHTS_FILE} ({WEIGHTS_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
