"""The shipped noise_key denoiser: safe to load, told the right error level, and useful."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.plugin import Context
from testkit import synthetic

imagecodecs = pytest.importorskip("imagecodecs", reason="the bench extra (imagecodecs) simulates the lossy copy")

from models.noise_key_denoiser import WEIGHTS_FILE, denoise, load  # noqa: E402
from models.training.noise_key_data import run  # noqa: E402

CTX = Context(series_key=b"\x33" * 32)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """A slice the network never saw (training uses seeds from 1000 up)."""
    return synthetic.phantom_slice(0.37, 256, seed=424242).astype(np.int64) + 1024


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("quality", [50, 90])
def test_the_error_level_read_from_the_jpeg_tables_is_the_real_one(phantom: np.ndarray, quality: int) -> None:
    copy = run(phantom, 12, False, 1.0, quality, CTX)
    assert copy.error_sd == pytest.approx(_rmse(copy.unpacked, phantom), rel=0.1)


def test_weights_load_without_pickle_and_are_small() -> None:
    state = torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert WEIGHTS_FILE.stat().st_size < 1_000_000


def test_denoising_a_lossy_copy_beats_subtracting_the_noise_alone(phantom: np.ndarray) -> None:
    model = load()
    heavy = run(phantom, 12, False, 1.0, 50, CTX)
    assert _rmse(denoise(model, heavy.unpacked, 12, heavy.error_sd), phantom) < 0.6 * _rmse(heavy.unpacked, phantom)
    mild = run(phantom, 12, False, 1.0, 90, CTX)
    assert _rmse(denoise(model, mild.unpacked, 12, mild.error_sd), phantom) <= _rmse(mild.unpacked, phantom)
