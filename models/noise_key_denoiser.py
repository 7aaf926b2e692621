"""The edge-side denoiser of ``noise_key`` (the PPDD paper's deep denoising step).

Input: an unpacked lossy copy, i.e. a JPEG copy of the protected pixels minus the keyed
noise, unwrapped (``plugins.noise_key.unpack``), in stored-value units, and the size of
the error left on it. That error is the codec's quantisation error on a noise-dominated
image: every DCT coefficient of the protected image is large, so each is off by a uniform
error of its quantisation step q, and the pixel error's sd is sqrt(mean(q^2) / 12) (the
JPEG DCT is orthonormal). ``jpeg_error_sd`` reads it from the copy's own quantisation
tables, so the edge needs no side information. A small residual CNN (DnCNN shape, with
the error sd as a second input plane as in FFDNet) predicts the error in units of that
sd, so a mild copy is only touched mildly; a blind network of the same size over-smoothed
mild copies (measured: JPEG Q90 error went from 3.9 to 4.3 HU).

Inputs are divided by ``2**min(BitsStored, 12)`` scaled by ``INPUT_SCALE``: with the bits
above 12 dropped by 12-bit JPEG, the error then has the same size for 12 to 16-bit data.
The exact restore never uses this network; it only serves views of altered copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import WEIGHTS

WEIGHTS_FILE = WEIGHTS / "noise_key_denoiser.pt"
INPUT_SCALE = 4.0  # 12-bit CT's 0..4095 becomes 0..4: unit-sized activations
LEVEL_UNIT = 0.02  # error sds are fed in this unit (about JPEG Q50's, in network units)


class NoiseKeyDenoiser(nn.Module):
    """``depth`` 3x3 convolutions with ``width`` channels; predicts the error, subtracts it."""

    def __init__(self, depth: int = 5, width: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x``: N x 1 x H x W images; ``level``: N error sds (same units)."""
        sd = level.reshape(-1, 1, 1, 1)
        return x - sd * self.body(torch.cat([x, (sd / LEVEL_UNIT).expand_as(x)], dim=1))


def scale_of(bits_stored: int) -> float:
    """Stored-value units per network unit."""
    return float(1 << min(bits_stored, 12)) / INPUT_SCALE * (1 << max(bits_stored - 12, 0))


def load(path: Path = WEIGHTS_FILE) -> NoiseKeyDenoiser:
    model = NoiseKeyDenoiser()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def denoise(model: NoiseKeyDenoiser, unpacked: np.ndarray, bits_stored: int, error_sd: float) -> np.ndarray:
    """The denoised image (float64, stored-value units) of one 2-D unpacked image whose
    error has sd ``error_sd`` (stored-value units, e.g. from ``jpeg_error_sd``)."""
    scale = scale_of(bits_stored)
    with torch.no_grad():
        x = torch.from_numpy((unpacked / scale).astype(np.float32))[None, None]
        out = model(x, torch.tensor([error_sd / scale], dtype=torch.float32))
        return out[0, 0].numpy().astype(np.float64) * scale


def jpeg_error_sd(stream: bytes) -> float:
    """Expected pixel error sd of a JPEG stream on noise-like content, in the units of
    the samples it encodes: sqrt(mean(q^2) / 12) over the first (luminance) table."""
    pos = 2  # after SOI
    while pos + 4 <= len(stream) and stream[pos] == 0xFF and stream[pos + 1] != 0xDA:
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        if stream[pos + 1] == 0xDB:
            table = stream[pos + 4 : pos + 2 + length]
            wide = table[0] >> 4  # Pq: 0 -> 8-bit entries, 1 -> 16-bit
            q = np.frombuffer(table[1 : 1 + 64 * (1 + wide)], dtype=">u2" if wide else "u1").astype(np.float64)
            return float(np.sqrt(np.mean(q**2) / 12))
        pos += 2 + length
    raise ValueError("no quantisation table in the JPEG stream")
