"""A shipped autoencoder at work: image -> int8 latent -> exact integer prediction.

The encoder runs in float (its output is stored, so it need not be reproducible); the
prediction runs the integer program of ``models.exact``, so protect and restore compute
the very same prediction on any machine. Image values are mapped to [0, 1] by the
image's own minimum and maximum (``lo``, ``hi``, stored with the latent), and back
with integer arithmetic.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import WEIGHTS
from models.ae import MODELS, quantise_latent
from models.exact import OUT_SHIFT, Op, check_machine, from_state, run_numpy, run_torch

_lock = threading.Lock()


class AePredictor:
    """Encoder and exact decoder of one shipped model (``models/<name>.pt``)."""

    def __init__(self, name: str, path: Path | None = None, device: str = "cpu") -> None:
        state = torch.load(path or WEIGHTS / f"{name}.pt", weights_only=True, map_location="cpu")
        if state["arch"] not in MODELS:
            raise ValueError(f"unknown autoencoder architecture {state['arch']!r}")
        self.name = name
        self.model = MODELS[state["arch"]]()
        self.model.load_state_dict(state["float"])
        self.model.eval()
        self.program: list[Op] = from_state(state["program"])
        self.factor: int = self.model.factor  # type: ignore[assignment]  # torch types module attributes as Tensor | Module; these are ints
        self.channels: int = self.model.latent_channels  # type: ignore[assignment]  # torch types module attributes as Tensor | Module; these are ints
        self.device = device
        check_machine(self.program, self.channels, device)

    def latent_shape(self, rows: int, cols: int) -> tuple[int, int, int]:
        f = self.factor
        return self.channels, -(-rows // f), -(-cols // f)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames (N, rows, cols) of stored values -> (int8 latents, lo, hi) per frame."""
        flat = images.reshape(len(images), -1)
        lo, hi = flat.min(axis=1).astype(np.int64), flat.max(axis=1).astype(np.int64)
        span = np.maximum(hi - lo, 1).astype(np.float32)
        x = (images.astype(np.float32) - lo[:, None, None].astype(np.float32)) / span[:, None, None]
        t = _pad_to(torch.from_numpy(x)[:, None], self.factor)
        latents = quantise_latent(self.model.encode(t)).numpy()  # type: ignore[operator]  # the model is one of the ae.py networks, typed nn.Module
        return latents, lo, hi

    def predict(self, latents: np.ndarray, lo: np.ndarray, hi: np.ndarray, rows: int, cols: int,
                reference: bool = False) -> np.ndarray:
        """The exact prediction (int64, N rows cols) of each frame, in stored values."""
        if reference:
            out = run_numpy(self.program, latents)
        else:
            out = run_torch(self.program, torch.from_numpy(latents.astype(np.int64)), self.device).numpy()
        y = np.clip(out[:, 0, :rows, :cols], 0, 1 << OUT_SHIFT)
        span = (hi - lo)[:, None, None]
        pred = lo[:, None, None] + ((y * span + (1 << (OUT_SHIFT - 1))) >> OUT_SHIFT)
        return np.clip(pred, lo[:, None, None], hi[:, None, None])


def _pad_to(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Edge-pad the bottom and right so both sides divide by ``multiple``."""
    rows, cols = t.shape[-2:]
    pad_r, pad_c = -rows % multiple, -cols % multiple
    return F.pad(t, (0, pad_c, 0, pad_r), mode="replicate") if pad_r or pad_c else t


@lru_cache(maxsize=4)
def load(name: str, device: str = "cpu") -> AePredictor:
    """One predictor per model and device per process (loading checks the machine)."""
    with _lock:
        return AePredictor(name, device=device)
