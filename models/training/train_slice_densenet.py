"""Train the SliceDenseNet that orders slices for the coverless transform.

Self-supervised on synthetic phantoms (testkit/synthetic.py): for a batch of slices taken
at known heights z, the loss pulls the Euclidean distance between two slices' features
towards 4 * |z_i - z_j| (a one-dimensional metric embedding), under random rotation,
scale, shift, flips, gamma and noise, so that distance grows with slice distance and the
nearest-neighbour chain of ordering.py walks the series in order.

Then it measures the ordering quality (Kendall tau of the rebuilt order against the true
slice order) of the trained weights, of the same network with random weights, and of raw
64x64 thumbnails, on held-out phantom series and on pydicom's real 10-slice MR, and prints
the figures as JSON for the model card.

    .venv/bin/python models/training/train_slice_densenet.py            # about 6 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from models import WEIGHTS
from models.slice_densenet import INPUT_SIZE, WEIGHTS_NAME, SliceDenseNet
from plugins.coverless import densenet_features, ordering, working_image
from testkit import synthetic


def bank(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` phantom slices at random heights, rendered like the plugin renders them."""
    rng = np.random.default_rng(seed)
    zs = rng.uniform(0, 1, count)
    images = []
    for i, z in enumerate(zs):
        hu = synthetic.phantom_slice(float(z), 128, seed=seed * 10007 + i).astype(np.int64) + 1024
        images.append(working_image.resample(working_image.window8(hu), INPUT_SIZE))
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255.0)
    return x, torch.from_numpy(zs.astype(np.float32))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * (2 * math.pi * 15 / 360)
    scale = 0.85 + 0.3 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.16
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 2 * math.log(1.6))
    out = out.clamp(0, 1) ** gamma
    out = out + torch.randn(out.shape, generator=gen) * 0.03 * torch.rand(n, 1, 1, 1, generator=gen)
    return out.clamp(0, 1)


def train(steps: int, batch: int, seed: int) -> SliceDenseNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, z = bank(3000, seed)
    model = SliceDenseNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        f = model(augment(x[idx], gen))
        d = torch.cdist(f, f) + 0.0
        target = 4.0 * (z[idx][:, None] - z[idx][None, :]).abs()
        mask = ~torch.eye(batch, dtype=torch.bool)
        loss = ((d - target)[mask] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f} s", flush=True)
    return model.eval()


def kendall_tau(order: list[int]) -> float:
    """|tau| between the rebuilt order and the true one (direction does not matter)."""
    from scipy.stats import kendalltau

    return abs(float(kendalltau(np.arange(len(order)), np.asarray(order)).statistic))


def thumbnails(images: list[np.ndarray]) -> np.ndarray:
    """The baseline: the network's 64x64 input itself as the feature vector."""
    return np.rint(densenet_features.network_input(images).reshape(len(images), -1) * 255).astype(np.int64)


def held_out() -> dict[str, list[np.ndarray]]:
    """Series the training never saw, in their true order, as the plugin's working images."""
    sets = {}
    for n in (60, 200):
        series = synthetic.ct_series(n, 512, seed=4242)
        sets[f"phantom_ct_{n}"] = [working_image.resample(working_image.render8(ds), 256) for ds in series]
    import pydicom
    from pydicom.data import get_testdata_file

    mr = pydicom.dcmread(str(get_testdata_file("emri_small.dcm")))
    sets["pydicom_emri_small_mr_10"] = [
        working_image.resample(working_image.window8(frame.astype(np.int64)), 256) for frame in mr.pixel_array
    ]
    return sets


def ordering_quality(model: SliceDenseNet, sets: dict[str, list[np.ndarray]],
                     shuffle_seed: int = 7) -> dict[str, dict[str, float]]:
    torch.manual_seed(123)
    random_model = SliceDenseNet().eval()
    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(shuffle_seed)
    for name, images in sets.items():
        perm = rng.permutation(len(images))  # received in a random order
        shuffled = [images[i] for i in perm]
        results = {}
        for label, feats in (
            ("trained", ordering.quantised(densenet_features.features(shuffled, model))),
            ("random_weights", ordering.quantised(densenet_features.features(shuffled, random_model))),
            ("thumbnails_64px", thumbnails(shuffled)),
        ):
            order = ordering.feature_order(feats, shuffled)
            results[label] = round(kendall_tau([int(perm[i]) for i in order]), 4)
        out[name] = results
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(WEIGHTS / WEIGHTS_NAME))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    model = train(args.steps, args.batch, args.seed)
    torch.save(model.state_dict(), args.out)
    quality = ordering_quality(model, held_out())
    print(json.dumps({"train_seconds": round(time.time() - started), "steps": args.steps, "batch": args.batch,
                      "parameters": sum(p.numel() for p in model.parameters()), "kendall_tau": quality}, indent=2))


if __name__ == "__main__":
    main()
