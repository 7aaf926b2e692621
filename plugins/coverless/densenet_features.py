"""Slice features from the shipped SliceDenseNet (models/slice_densenet.pt).

Loaded once per process; torch is imported only when a series is ordered by the network.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from plugins.coverless.working_image import resample

if TYPE_CHECKING:
    import torch


class ModelUnavailable(RuntimeError):
    """The weights are not installed with this gateway."""


@lru_cache(maxsize=1)
def shipped_model() -> torch.nn.Module:
    import torch

    from models import WEIGHTS
    from models.slice_densenet import WEIGHTS_NAME, SliceDenseNet

    path = WEIGHTS / WEIGHTS_NAME
    if not path.exists():
        raise ModelUnavailable(f"{WEIGHTS_NAME} is not installed")
    model = SliceDenseNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def network_input(images: list[np.ndarray]) -> np.ndarray:
    """N x 1 x 64 x 64 float32 in [0, 1] from the working images."""
    from models.slice_densenet import INPUT_SIZE

    return np.stack([resample(img, INPUT_SIZE) for img in images])[:, None].astype(np.float32) / 255.0


def features(images: list[np.ndarray], model: torch.nn.Module | None = None) -> np.ndarray:
    """N x F float features (one thread: the same sums in the same order on every run)."""
    import torch

    net = model if model is not None else shipped_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            chunks = np.array_split(network_input(images), max(1, len(images) // 64))
            out = [net(torch.from_numpy(chunk)).numpy() for chunk in chunks]
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(out).astype(np.float64)
