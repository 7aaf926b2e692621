"""Train the seed paper's denoising autoencoder (models/dae.py) on noisy/clean pairs.

Pairs: 64x64 patches of the training images (models/training/training_data.py), the grey value
repeated in the three channels; noisy = clip(clean + N(0, sigma), 0, 1), as the paper
describes. Adam, mean squared error. Prints PSNR/SSIM on held-out pairs (real CT/MR
and an unseen phantom slice) at the end.

    .venv/bin/python -m models.training.train_dae                # about 5 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from models import WEIGHTS
from models.dae import TILE, PaperDAE
from models.training.dae_quality import SIGMA, dae_quality, noisy
from models.training.training_data import random_crops, training_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = training_images(rng=rng)
    model = PaperDAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for step in range(args.steps):
        clean = torch.from_numpy(random_crops(images, args.batch, TILE, rng)).expand(-1, 3, -1, -1)
        loss = torch.nn.functional.mse_loss(model(noisy(clean, SIGMA)), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.5f} ({time.time() - start:.0f} s)", flush=True)
    torch.save(model.state_dict(), WEIGHTS / "dae.pt")
    print(dae_quality(model.eval()))  # the same figures the benchmark prints


if __name__ == "__main__":
    main()
