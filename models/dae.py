"""The denoising autoencoder of "Privacy preserving data mining techniques using a
denoising autoencoder (DAE) for medical images" (seed paper), exactly as described.

Input 64x64x3; encoder Conv2D 32 and 64 (3x3, ReLU, 'same'), each followed by batch
normalisation; decoder Conv2D 64 and 32 with batch normalisation; output Conv2D 3 with a
sigmoid. The paper's counts: 76,419 parameters, 76,035 trainable, 384 non-trainable
(Keras counts the batch-norm moving mean and variance as non-trainable parameters; in
torch they are the ``running_mean``/``running_var`` buffers).

``denoise`` applies it to a single-channel image of any size in 64x64 tiles, the
channel repeated three times and the three outputs averaged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TILE = 64


class PaperDAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]

        self.net = nn.Sequential(
            *block(3, 32), *block(32, 64),  # encoder
            *block(64, 64), *block(64, 32),  # decoder
            nn.Conv2d(32, 3, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def parameter_counts(model: nn.Module) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) as Keras reports them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable + stats, trainable, stats


@torch.inference_mode()
def denoise(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image (rows, cols) denoised tile by tile."""
    rows, cols = image.shape
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    t = F.pad(t, (0, -cols % TILE, 0, -rows % TILE), mode="replicate")
    tiles = F.unfold(t, TILE, stride=TILE)  # 1, 64*64, n
    n = tiles.shape[-1]
    batch = tiles[0].T.reshape(n, 1, TILE, TILE).expand(n, 3, TILE, TILE)
    out = model.eval()(batch).mean(1).reshape(n, TILE * TILE).T[None]
    full = F.fold(out, t.shape[-2:], TILE, stride=TILE)
    return full[0, 0, :rows, :cols].numpy()
