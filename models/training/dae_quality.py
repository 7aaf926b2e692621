"""How well the denoising autoencoder (the DAE paper's network) denoises: held-out pairs and
their scores, shared by the training script and ``bench/ae_aes.py`` so both print the same
figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.dae import TILE
from models.training.training_data import held_out_real, normalise, phantom, random_crops

SIGMA = 0.1


def noisy(clean: torch.Tensor, sigma: float, gen: torch.Generator | None = None) -> torch.Tensor:
    return (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0, 1)


def held_out_pairs(n: int = 256, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and noisy 64x64x3 test pairs from images never used in training."""
    rng = np.random.default_rng(seed)
    images = [normalise(img) for img in held_out_real().values()] + [normalise(phantom(0.5, seed=0))]
    clean = torch.from_numpy(random_crops(images, n, TILE, rng)).expand(n, 3, TILE, TILE).contiguous()
    return clean, noisy(clean, SIGMA, torch.Generator().manual_seed(seed))


def dae_quality(model: torch.nn.Module) -> dict[str, Any]:
    """The DAE on held-out 64x64x3 noisy/clean pairs (Gaussian sigma 0.1, clipped)."""
    clean, pairs_noisy = held_out_pairs()
    with torch.inference_mode():
        denoised = model.eval()(pairs_noisy)

    def scores(a: torch.Tensor) -> dict[str, float]:
        pairs = [(c.permute(1, 2, 0).numpy().astype(np.float64), x.permute(1, 2, 0).numpy().astype(np.float64))
                 for c, x in zip(clean, a, strict=True)]
        return {"psnr_db": float(np.mean([peak_signal_noise_ratio(c, x, data_range=1.0) for c, x in pairs])),
                "ssim": float(np.mean([structural_similarity(c, x, data_range=1.0, channel_axis=2) for c, x in pairs]))}

    return {"pairs": len(clean), "sigma": SIGMA, "noisy_vs_clean": scores(pairs_noisy),
            "denoised_vs_clean": scores(denoised),
            "paper": "accuracy 83.4-85% overall; PSNR/SSIM only plotted per iteration (Fig. 3), no numbers given"}
