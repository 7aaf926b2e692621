"""Autoencoders for single-channel images of any size (ae_aes transform).

Two families share one interface (``encode`` a normalised image to an int8 latent, a
float ``decode`` for training, and ``program_layers`` for the integer export in
``models.exact``):

- ``PaperAE``: the seed paper's network ("Medical image encryption using autoencoder
  and AES", Table 2) adapted to one channel: conv 64 (3x3) -> max-pool 2x2 -> conv 64 ->
  conv 32 -> 1x1 "dense" to 3 channels (the latent, half resolution); the decoder mirrors
  it: 1x1 dense 3 -> transposed conv 32 -> 2x upsampling -> transposed conv 64 -> 64 ->
  transposed conv to 1 channel. Heavy at full resolution (about 5 G multiply-adds per
  512x512 image), and its latent holds 0.75 values per pixel.
- ``LiteAE``: our variant for lossless coding. The encoder folds 4x4 pixel blocks into
  channels, works at 1/4 and 1/8 resolution and emits 4 channels at 1/8 resolution
  (1/16 value per pixel); the decoder predicts at low resolution and unfolds with
  depth-to-space, about 0.35 G multiply-adds per 512x512 image.

Both latents are trained with additive uniform noise and rounded to int8 at use, so the
integer decoder's input is exact. Output layers are linear (no sigmoid), since the
integer program has no sigmoid; the prediction is clipped to the image's range anyway.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.exact import LATENT_MAX


class PaperAE(nn.Module):
    """The seed paper's autoencoder with one input and one output channel."""

    name = "ae_paper"
    latent_channels = 3
    factor = 2

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 64, 3, padding=1)
        self.enc2 = nn.Conv2d(64, 64, 3, padding=1)
        self.enc3 = nn.Conv2d(64, 32, 3, padding=1)
        self.enc_dense = nn.Conv2d(32, 3, 1)
        self.dec_dense = nn.Conv2d(3, 3, 1)
        self.dec1 = nn.ConvTranspose2d(3, 32, 3, padding=1)
        self.dec2 = nn.ConvTranspose2d(32, 64, 3, padding=1)
        self.dec3 = nn.ConvTranspose2d(64, 64, 3, padding=1)
        self.out = nn.ConvTranspose2d(64, 1, 3, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.enc1(x)), 2)
        h = F.relu(self.enc3(F.relu(self.enc2(h))))
        return self.enc_dense(h)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.dec_dense(y))
        h = F.interpolate(F.relu(self.dec1(h)), scale_factor=2, mode="nearest")
        return self.out(F.relu(self.dec3(F.relu(self.dec2(h)))))

    def program_layers(self) -> list[tuple[str, Any]]:
        """The decoder as plain convolutions (input in latent units)."""
        return [
            ("conv", (self.dec_dense.weight, self.dec_dense.bias, True)),
            ("conv", (*_transposed_as_conv(self.dec1), True)),
            ("upsample", 2),
            ("conv", (*_transposed_as_conv(self.dec2), True)),
            ("conv", (*_transposed_as_conv(self.dec3), True)),
            ("conv", (*_transposed_as_conv(self.out), False)),
        ]


class LiteAE(nn.Module):
    """A small autoencoder whose decoder is cheap enough for 20 images/s at 512x512."""

    name = "ae_lite"
    latent_channels = 4
    factor = 8

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.PixelUnshuffle(4),
            nn.Conv2d(16, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, self.latent_channels, 3, padding=1),
        )
        self.dec1 = nn.Conv2d(self.latent_channels, 64, 3, padding=1)
        self.dec2 = nn.Conv2d(64, 64, 3, padding=1)
        self.dec3 = nn.Conv2d(16, 32, 3, padding=1)
        self.dec4 = nn.Conv2d(32, 16, 3, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.dec2(F.relu(self.dec1(y))))
        h = F.relu(self.dec3(F.pixel_shuffle(h, 2)))
        return F.pixel_shuffle(self.dec4(h), 4)

    def program_layers(self) -> list[tuple[str, Any]]:
        return [
            ("conv", (self.dec1.weight, self.dec1.bias, True)),
            ("conv", (self.dec2.weight, self.dec2.bias, True)),
            ("shuffle", 2),
            ("conv", (self.dec3.weight, self.dec3.bias, True)),
            ("conv", (self.dec4.weight, self.dec4.bias, False)),
            ("shuffle", 4),
        ]


MODELS: dict[str, type[nn.Module]] = {"ae_paper": PaperAE, "ae_lite": LiteAE}


def _transposed_as_conv(layer: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A stride-1 transposed convolution is a convolution with the kernel flipped."""
    assert layer.bias is not None
    return layer.weight.transpose(0, 1).flip(2, 3), layer.bias


def quantise_latent(y: torch.Tensor) -> torch.Tensor:
    """The stored latent: int8, what the integer decoder reads."""
    return torch.round(y).clamp(-LATENT_MAX, LATENT_MAX).to(torch.int8)


def noisy_latent(y: torch.Tensor) -> torch.Tensor:
    """Training stand-in for rounding: additive uniform noise, then the int8 range."""
    return (y + torch.empty_like(y).uniform_(-0.5, 0.5)).clamp(-LATENT_MAX, LATENT_MAX)
