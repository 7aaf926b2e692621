"""Integer decoders that give the same output, bit for bit, on every machine.

The ae_aes transform stores ``original - prediction``; restore adds the prediction back.
A float decoder rounds differently with other thread counts, CPUs or GPUs, and a single
flipped pixel breaks the exact restore. So the decoder is exported once, at training
time, into an *integer program*: integer weights and biases, ReLU, a requantisation to
8-bit activations by a power-of-two shift with rounding, depth-to-space and nearest
upsampling (pure permutations). Every number is an integer.

Two interpreters run the program:

- ``run_torch``: ``F.conv2d`` on integer-valued float tensors. At export every layer is
  scaled so that the sum of |products| of any output stays below 2**23; all partial sums
  in any order are then exact in float32, so any summation order (threads, blocking, BLAS,
  GEMM or direct convolution) gives the same integers. Results are rounded to the nearest
  integer before the integer requantisation, which also absorbs the tiny errors of
  transform-based algorithms (Winograd, FFT). The shift ``floor(acc * 2**-s + 1/2)`` is
  exact in float32 for s <= 24. On CUDA everything runs in float64 (cuDNN may pick TF32
  or Winograd for float32).
- ``run_numpy``: the reference, im2col and ``int64`` matrix products in numpy: no floating
  point at all. ``check_machine`` compares both on a probe input at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

# Sum of |w * a| + |b| over one output: below this every float32 partial sum is exact.
ACC_LIMIT = 2**23
ACT_MAX = 255  # ReLU activations are requantised to 0..255
LATENT_MAX = 127  # the latent is int8
OUT_SHIFT = 16  # the final layer writes the normalised image as 0..2**16


class ExactnessError(Exception):
    """The integer program cannot be computed exactly on this machine."""


@dataclass(frozen=True)
class Conv:
    """One integer convolution: ``acc = conv(x, w) + b``, optional ReLU, then
    ``out = floor(acc / 2**shift + 1/2)``. All scales are powers of two, so in float
    arithmetic the requantisation is exact too (a power-of-two multiply, a half, a floor)."""

    weight: torch.Tensor  # int32 (cout, cin, k, k)
    bias: torch.Tensor  # int64 (cout,)
    shift: int
    relu: bool
    final: bool  # the last layer: out is the image at scale 2**OUT_SHIFT, not clamped to 8 bits


@dataclass(frozen=True)
class Shuffle:
    """Depth to space by ``factor`` (``pixel_shuffle``)."""

    factor: int


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling by ``factor``."""

    factor: int


Op = Conv | Shuffle | Upsample


def quantise_program(layers: list[tuple[str, Any]], in_max: int, act_max: list[float]) -> list[Op]:
    """Turn float layers into an integer program.

    ``layers``: ("conv", (weight, bias, relu)) with float tensors (``weight`` as for
    ``F.conv2d``), ("shuffle", r) or ("upsample", r). The input is integer already (the
    latent, |x| <= ``in_max``). ``act_max``: the calibrated largest output of each conv
    (float units); hidden activations get the largest power-of-two scale that keeps it
    within ACT_MAX, weights the largest that keeps every accumulator below ACC_LIMIT.
    """
    ops: list[Op] = []
    log_scale, amax = 0, in_max
    convs = [i for i, (kind, _) in enumerate(layers) if kind == "conv"]
    for i, (kind, arg) in enumerate(layers):
        if kind in ("shuffle", "upsample"):
            ops.append(Shuffle(int(arg)) if kind == "shuffle" else Upsample(int(arg)))
            continue
        weight, bias, relu = arg
        w, b = weight.detach().double(), bias.detach().double()
        l1 = w.abs().flatten(1).sum(1).max().item()
        room = ACC_LIMIT * 0.98 / (l1 * amax + (b.abs().max().item() + 1.0) * 2.0**log_scale)
        log_acc = log_scale + math.floor(math.log2(room))
        wq = torch.round(w * 2.0 ** (log_acc - log_scale))
        bq = torch.round(b * 2.0**log_acc)
        final = i == convs[-1]
        log_out = OUT_SHIFT if final else math.floor(math.log2(ACT_MAX / max(act_max[convs.index(i)], 1e-6)))
        ops.append(Conv(wq.to(torch.int32), bq.to(torch.int64), log_acc - log_out, relu=relu, final=final))
        log_scale, amax = log_out, ACT_MAX
    check_bounds(ops, in_max)
    return ops


def check_bounds(ops: list[Op], in_max: int) -> None:
    """Every accumulator of the program stays below ACC_LIMIT (so float32 sums are exact)."""
    amax = in_max
    for op in ops:
        if isinstance(op, Conv):
            worst = op.weight.abs().to(torch.int64).flatten(1).sum(1).max().item() * amax
            worst += op.bias.abs().max().item()
            if worst >= ACC_LIMIT:
                raise ExactnessError(f"accumulator bound {worst} exceeds {ACC_LIMIT}")
            if op.shift > 24:  # acc / 2**shift + 1/2 must fit float32's 24-bit significand
                raise ExactnessError(f"requantisation shift {op.shift} exceeds 24")
            amax = ACT_MAX


def run_torch(ops: list[Op], latent: torch.Tensor, device: str = "cpu",
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """The program on ``latent`` (int, N C H W) with torch; returns int64 N 1 H W.
    float32 on CPU, float64 on CUDA unless ``dtype`` says otherwise (tests run both)."""
    dtype = dtype or (torch.float64 if device.startswith("cuda") else torch.float32)
    x = latent.to(device=device, dtype=dtype)
    for op in ops:
        if isinstance(op, Shuffle):
            x = F.pixel_shuffle(x, op.factor)
        elif isinstance(op, Upsample):
            x = F.interpolate(x, scale_factor=op.factor, mode="nearest")
        else:
            w = op.weight.to(device=device, dtype=dtype)
            acc = torch.round(F.conv2d(x, w, op.bias.to(device=device, dtype=dtype), padding=w.shape[-1] // 2))
            if op.relu:
                acc = acc.clamp_min_(0)
            x = torch.floor_(acc.mul_(2.0**-op.shift).add_(0.5))
            if not op.final:
                x = x.clamp_(0, ACT_MAX)
    return x.to("cpu", torch.int64)


def run_numpy(ops: list[Op], latent: np.ndarray) -> np.ndarray:
    """The reference interpreter: int64 throughout, no floating point. N C H W in and out."""
    x = latent.astype(np.int64)
    for op in ops:
        if isinstance(op, Shuffle):
            n, c, h, w = x.shape
            r = op.factor
            x = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
            x = x.reshape(n, c // (r * r), h * r, w * r)
        elif isinstance(op, Upsample):
            x = x.repeat(op.factor, axis=2).repeat(op.factor, axis=3)
        else:
            wt = op.weight.numpy().astype(np.int64)
            cout, cin, k, _ = wt.shape
            p = k // 2
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            win = sliding_window_view(padded, (k, k), axis=(2, 3))  # n cin h w k k
            n, _, h, w = x.shape
            cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, cin * k * k, h * w)
            acc = (wt.reshape(cout, -1) @ cols).reshape(n, cout, h, w) + op.bias.numpy().reshape(1, -1, 1, 1)
            if op.relu:
                acc = np.maximum(acc, 0)
            x = (acc + (1 << (op.shift - 1))) >> op.shift if op.shift > 0 else acc << -op.shift
            if not op.final:
                x = np.clip(x, 0, ACT_MAX)
    return x


def check_machine(ops: list[Op], channels: int, device: str = "cpu", size: int = 12) -> None:
    """Raise ExactnessError unless the torch path equals the integer reference here."""
    rng = np.random.default_rng(20240517)
    probe = rng.integers(-LATENT_MAX // 4, LATENT_MAX // 4 + 1, size=(1, channels, size, size))
    want = run_numpy(ops, probe)
    got = run_torch(ops, torch.from_numpy(probe), device).numpy()
    if not np.array_equal(want, got):
        raise ExactnessError(f"the {device} decoder differs from the integer reference on this machine")


def to_state(ops: list[Op]) -> list[dict[str, Any]]:
    """A form that ``torch.load(weights_only=True)`` reads back."""
    out: list[dict[str, Any]] = []
    for op in ops:
        if isinstance(op, Conv):
            out.append({"op": "conv", "weight": op.weight, "bias": op.bias, "shift": op.shift,
                        "relu": op.relu, "final": op.final})
        else:
            out.append({"op": "shuffle" if isinstance(op, Shuffle) else "upsample", "factor": op.factor})
    return out


def from_state(state: list[dict[str, Any]]) -> list[Op]:
    ops: list[Op] = []
    for item in state:
        if item["op"] == "conv":
            ops.append(Conv(item["weight"], item["bias"], item["shift"], item["relu"], item["final"]))
        elif item["op"] == "shuffle":
            ops.append(Shuffle(item["factor"]))
        else:
            ops.append(Upsample(item["factor"]))
    return ops
