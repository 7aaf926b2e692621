"""Shared training loop and integer export for the ae_aes autoencoders.

Loss: a proxy for the bytes the transform stores: the entropy of a Laplacian residual
and latent, ``log2(mean |residual|)`` per pixel plus ``log2(mean |latent|)`` per latent
value (weighted by latent values per pixel), with additive uniform noise standing in for
the latent's rounding. ``--loss mse`` trains
the paper's way (mean squared error on [0, 1] images).

After training: calibrate each decoder layer's activation range on training crops,
export the integer program (``models.exact``), and check that its prediction matches the
float decoder closely.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import WEIGHTS
from models.ae import MODELS, noisy_latent, quantise_latent
from models.exact import LATENT_MAX, quantise_program, run_torch, to_state
from models.training.training_data import random_crops, training_images

STORED_RANGE = 2500.0  # typical max - min of a CT slice in stored units, for the loss


def bits_proxy(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rate_weight: float) -> torch.Tensor:
    """Bits per pixel if residual and latent were Laplacian: log2 of each mean |value|
    (plus a constant), the latent's weighted by latent values per pixel."""
    per_pixel = torch.log2((pred - x).abs().mean() * STORED_RANGE + 0.5)
    latent_per_pixel = y.numel() / x.numel()
    return per_pixel + rate_weight * latent_per_pixel * torch.log2(y.abs().mean() + 0.5)


def train(arch: str, steps: int, crop: int, batch: int, loss: str, lr: float, seed: int,
          rate: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = training_images(rng=rng)
    model = MODELS[arch]()
    optimiser = torch.optim.Adamax if loss == "mse" else torch.optim.Adam
    opt = optimiser(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.time()
    for step in range(steps):
        x = torch.from_numpy(random_crops(images, batch, crop, rng))
        y = noisy_latent(model.encode(x))  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
        pred = model.decode(y)  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
        # the latent's cost joins after a warm-up, or it collapses before the decoder uses it
        rate_weight = rate * min(1.0, max(0.0, (step / steps - 0.3) / 0.3))
        value = ((pred - x) ** 2).mean() if loss == "mse" else bits_proxy(pred, x, y, rate_weight)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} loss {value.item():.5f} ({time.time() - start:.0f} s)", flush=True)
    return model.eval()


def float_program(layers: list, y: torch.Tensor) -> list[float]:
    """Run the decoder's layers in float; return each convolution's largest output."""
    maxima = []
    h = y
    for kind, arg in layers:
        if kind == "shuffle":
            h = torch.nn.functional.pixel_shuffle(h, arg)
        elif kind == "upsample":
            h = torch.nn.functional.interpolate(h, scale_factor=arg, mode="nearest")
        else:
            w, b, relu = arg
            h = torch.nn.functional.conv2d(h, w, b, padding=w.shape[-1] // 2)
            h = torch.relu(h) if relu else h
            maxima.append(float(h.max()))
    return maxima


@torch.inference_mode()
def export(model: nn.Module, crop: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    x = torch.from_numpy(random_crops(training_images(rng=rng), 64, crop, rng))
    y = quantise_latent(model.encode(x)).float()  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
    layers = model.program_layers()  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
    ops = quantise_program(layers, LATENT_MAX, float_program(layers, y))
    float_pred = model.decode(y)  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
    int_pred = run_torch(ops, y.to(torch.int64)).double() / 2**16
    err_float = (float_pred - x).abs().mean().item() * STORED_RANGE
    err_int = (int_pred - x).abs().mean().item() * STORED_RANGE
    print(f"mean |error| on training crops (stored units at range {STORED_RANGE:.0f}): "
          f"float decoder {err_float:.2f}, integer decoder {err_int:.2f}")
    return {"arch": model.name, "float": model.state_dict(), "program": to_state(ops)}


def main(arch: str, defaults: dict) -> None:
    parser = argparse.ArgumentParser(description=f"train and export {arch}")
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--crop", type=int, default=defaults["crop"])
    parser.add_argument("--batch", type=int, default=defaults["batch"])
    parser.add_argument("--loss", choices=["bits", "mse"], default=defaults["loss"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=defaults.get("rate", 1.0), help="weight of the latent's bits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS / f"{arch}.pt")
    parser.add_argument("--export-only", action="store_true", help="re-export the float weights in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.export_only:
        model = MODELS[arch]()
        model.load_state_dict(torch.load(args.out, weights_only=True)["float"])
    else:
        model = train(arch, args.steps, args.crop, args.batch, args.loss, args.lr, args.seed, args.rate)
    torch.save(export(model, args.crop, args.seed), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
