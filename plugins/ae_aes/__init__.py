"""ae_aes: autoencoder latent and residual under AES-256-GCM, restored bit for bit.

Seed paper: "Medical image encryption using autoencoder and AES" (encrypt the encoder's
features, decode on the receiving side). The paper's decoder output is lossy; here the
decoder's output is only a *prediction*, and the payload holds the int8 latent plus the
zstd-coded residual ``original - prediction``, so restore is exact. The prediction runs
an integer program (models/exact.py) that every machine computes identically; the
gateway's SHA-256 check of the rebuilt original is the final proof.

Settings (route ``plugin_settings``):
- ``model``: ``ae_lite`` (default; ours, fast) or ``ae_paper`` (the paper's network).
- ``mode``: ``encrypted`` (default): PixelData becomes the AES-256-GCM ciphertext of the
  payload (a valid 16-bit image of noise, the original width, as many rows as needed);
  ``preview``: PixelData becomes the decoder's lossy image, marked DERIVED and lossy, and
  the payload travels in the sealed envelope.
- ``denoise``: in preview mode, pass the preview through the paper's DAE (default false).
- ``zstd_level``: residual/latent compression level (default 3).
- ``batch``: frames encoded per network call (default 8).

Restore reads everything it needs from the record and the payload, never the settings.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from gateway.plugin import Context, PluginError
from models import ae_runtime
from models.exact import ExactnessError
from plugins.ae_aes import cipher_pixels, preview
from plugins.ae_aes.frames import Layout, frames_bytes, layout_of, read_frames
from plugins.ae_aes.payload import Payload, add_residual, residual_of

MODES = ("encrypted", "preview")


class AeAesTransform:
    name = "ae_aes"
    series_level = False

    def __init__(self, model: str = "ae_lite", mode: str = "encrypted", denoise: bool = False,
                 zstd_level: int = 3, batch: int = 8, device: str = "cpu") -> None:
        if mode not in MODES:
            raise PluginError(f"ae_aes mode must be one of {MODES}, not {mode!r}")
        if model not in ("ae_lite", "ae_paper"):
            raise PluginError(f"ae_aes model must be ae_lite or ae_paper, not {model!r}")
        self.model, self.mode, self.denoise = model, mode, bool(denoise)
        self.level, self.batch, self.device = int(zstd_level), max(int(batch), 1), device

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        predictor = self._predictor(self.model)
        records = []
        for group in _chunks(series, self.batch):
            records += self._protect_group(group, predictor, ctx)
        return records

    def _protect_group(self, group: list[Dataset], predictor: ae_runtime.AePredictor, ctx: Context) -> list[bytes]:
        layouts = [layout_of(ds) for ds in group]
        images = [read_frames(ds, lay) for ds, lay in zip(group, layouts, strict=True)]
        records = []
        for ds, lay, frames in zip(group, layouts, images, strict=True):
            latent, lo, hi = predictor.encode(frames.astype(np.int64))
            prediction = predictor.predict(latent, lo, hi, lay.rows, lay.cols)
            bits = np.dtype(lay.dtype).itemsize * 8
            payload = Payload(self.model, lay, lo.tolist(), hi.tolist(), latent,
                              residual_of(frames, prediction, bits), bytes(ds.PixelData[lay.image_bytes:]))
            data = payload.encode(self.level)
            head = {"v": 1, "mode": self.mode}
            if self.mode == "encrypted":
                cipher_pixels.seal_into(ds, data, ctx)
                records.append(_record(head))
            else:
                self._show_preview(ds, lay, prediction, lo, hi, ratio=lay.image_bytes / max(latent.nbytes, 1))
                records.append(_record(head, data))
        return records

    def _show_preview(self, ds: Dataset, lay: Layout, prediction: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      ratio: float) -> None:
        if self.denoise:
            prediction = np.stack([preview.denoised(p, int(a), int(b)) for p, a, b in zip(prediction, lo, hi, strict=True)])
        ds.PixelData = frames_bytes(prediction, lay) + bytes(ds.PixelData[lay.image_bytes:])
        preview.mark_lossy(ds, self.model, ratio, self.denoise)

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        for ds, record in zip(series, records, strict=True):
            if not record:
                continue
            head, body = _parse_record(record)
            data = cipher_pixels.open_from(ds, ctx) if head["mode"] == "encrypted" else body
            payload = Payload.decode(data)
            predictor = self._predictor(payload.model)
            lay = payload.layout
            lo, hi = np.array(payload.lo, np.int64), np.array(payload.hi, np.int64)
            prediction = predictor.predict(payload.latent, lo, hi, lay.rows, lay.cols)
            frames = add_residual(prediction, payload.residual, lay.dtype)
            ds.PixelData = frames_bytes(frames, lay) + payload.tail

    def _predictor(self, name: str) -> ae_runtime.AePredictor:
        try:
            return ae_runtime.load(name, self.device)
        except FileNotFoundError:
            raise PluginError(f"ae_aes model {name!r} is not installed") from None
        except ExactnessError as exc:
            raise PluginError(str(exc)) from None


def _chunks(items: list[Dataset], size: int) -> list[list[Dataset]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _record(head: dict[str, Any], body: bytes = b"") -> bytes:
    encoded = json.dumps(head).encode()
    return len(encoded).to_bytes(2, "big") + encoded + body


def _parse_record(record: bytes) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(record[:2], "big")
    try:
        head = json.loads(record[2 : 2 + size])
    except ValueError:
        raise PluginError("ae_aes record is malformed") from None
    if head.get("v") != 1 or head.get("mode") not in MODES:
        raise PluginError("ae_aes record has an unknown version or mode")
    return head, record[2 + size :]
