"""ae_aes: autoencoder latent and a lossless code of the image under AES-256-GCM, restored bit for bit.

Seed paper: "Medical image encryption using autoencoder and AES" (encrypt the encoder's
features, decode on the receiving side). The paper's decoder output is lossy, so the
payload holds the int8 latent (the paper's encrypted features) beside a JPEG XL lossless
code of the original (payload.py says why not a residual), and restore is exact without
running the network: lossless JPEG XL decoding is integer arithmetic. The preview runs
the decoder as an integer program (models/exact.py), so it too is the same on every
machine. The gateway's SHA-256 check of the rebuilt original is the final proof.

Any image gateway.frames reads is taken: native or compressed (the original encoded value
then travels in the payload for the exact restore), grey or colour (the network sees each
sample plane as a grey image: models/ae_lite.md), one frame or many (latent and lossless
code per frame). 8- and 16-bit samples only; 32-bit, 1-bit and float pixel data are
refused (``refuses``), so the series is quarantined.

Settings (route ``plugin_settings``):
- ``model``: ``ae_lite`` (default; ours, fast) or ``ae_paper`` (the paper's network).
- ``mode``: ``encrypted`` (default): PixelData becomes the AES-256-GCM ciphertext of the
  payload (a valid 16-bit image of noise, the original width, as many rows as needed);
  ``preview``: PixelData becomes the decoder's lossy image, marked DERIVED and lossy, and
  the payload travels in the sealed envelope.
- ``denoise``: in preview mode, pass the preview through the paper's DAE (default false).
- ``effort``: JPEG XL effort for the lossless code, 1-9 (default 4: the smallest payload
  that still protects 20 images/s on 2 cores; 7 stores 4% less at half the speed).
- ``batch``: instances encoded per group (default 8); a group's JPEG XL codes run on
  one thread per torch compute thread.

Restore reads everything it needs from the record and the payload, never the settings.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset

from gateway import frames
from gateway.frames import Frames
from gateway.plugin import Context, PluginError
from models import ae_runtime
from models.exact import ExactnessError
from plugins.ae_aes import cipher_pixels, preview
from plugins.ae_aes.payload import Payload

MODES = ("encrypted", "preview")
PLANES_AT_ONCE = 16  # grey planes per encoder call (memory)


class AeAesTransform:
    name = "ae_aes"
    series_level = False
    refuses = (frames.WIDE, frames.ONE_BIT, frames.FLOAT, frames.UNDECODABLE)

    def __init__(self, model: str = "ae_lite", mode: str = "encrypted", denoise: bool = False,
                 effort: int = 4, batch: int = 8, device: str = "cpu") -> None:
        if mode not in MODES:
            raise PluginError(f"ae_aes mode must be one of {MODES}, not {mode!r}")
        if model not in ("ae_lite", "ae_paper"):
            raise PluginError(f"ae_aes model must be ae_lite or ae_paper, not {model!r}")
        if not 1 <= int(effort) <= 9:
            raise PluginError(f"ae_aes effort must be 1 to 9, not {effort!r}")
        self.model, self.mode, self.denoise = model, mode, bool(denoise)
        self.effort, self.batch, self.device = int(effort), max(int(batch), 1), device

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        predictor = self._predictor(self.model)
        records = []
        # JPEG XL coding is most of the time and releases the GIL: one image per compute thread.
        with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
            for group in _chunks(series, self.batch):
                records += self._protect_group(group, predictor, pool, ctx)
        return records

    def _protect_group(self, group: list[Dataset], predictor: ae_runtime.AePredictor, pool: ThreadPoolExecutor,
                       ctx: Context) -> list[bytes]:
        images = [_read(ds) for ds in group]
        encoded = [_encode(predictor, _planes(fr.array)) for fr in images]
        payloads = [Payload(self.model, fr.layout, latent, fr.array if fr.encoded is None else None,
                            bytes(ds.PixelData[fr.layout.image_bytes:]) if fr.encoded is None else b"", fr.encoded)
                    for ds, fr, (latent, _, _) in zip(group, images, encoded, strict=True)]
        coded = list(pool.map(lambda payload: payload.encode(self.effort), payloads))
        records = []
        for ds, fr, data, (latent, lo, hi) in zip(group, images, coded, encoded, strict=True):
            head = {"v": 1, "mode": self.mode}
            if self.mode == "encrypted":
                cipher_pixels.seal_into(ds, data, ctx)
                records.append(_record(head))
            else:
                prediction = predictor.predict(latent, lo, hi, fr.layout.rows, fr.layout.cols)
                self._show_preview(ds, fr, prediction, lo, hi, ratio=fr.layout.image_bytes / max(latent.nbytes, 1))
                records.append(_record(head, data))
        return records

    def _show_preview(self, ds: Dataset, fr: Frames, prediction: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      ratio: float) -> None:
        if self.denoise:
            prediction = np.stack([preview.denoised(p, int(a), int(b))
                                   for p, a, b in zip(prediction, lo, hi, strict=True)])
        lay = fr.layout
        image = prediction.reshape(lay.frames, lay.samples, lay.rows, lay.cols).transpose(0, 2, 3, 1)
        frames.write(ds, Frames(image.astype(fr.array.dtype), lay, fr.photometric, fr.encoded))
        preview.mark_lossy(ds, self.model, ratio, self.denoise)

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        for ds, record in zip(series, records, strict=True):
            if not record:
                continue
            head, body = _parse_record(record)
            data = cipher_pixels.open_from(ds, ctx) if head["mode"] == "encrypted" else body
            payload = Payload.decode(data)
            if payload.original is not None:
                ds.PixelData = payload.original
            else:
                assert payload.frames is not None
                ds.PixelData = frames.pack(payload.frames, payload.layout) + payload.tail

    def _predictor(self, name: str) -> ae_runtime.AePredictor:
        try:
            return ae_runtime.load(name, self.device)
        except FileNotFoundError:
            raise PluginError(f"ae_aes model {name!r} is not installed") from None
        except ExactnessError as exc:
            raise PluginError(str(exc)) from None


def _read(ds: Dataset) -> Frames:
    """The frames of ``ds``, or PluginError for what the network and the code cannot take."""
    fr = frames.read(ds)
    if fr.array.dtype.itemsize not in (1, 2):
        raise PluginError(f"BitsAllocated {fr.array.dtype.itemsize * 8} is not supported (8 or 16)")
    return fr


def _planes(array: np.ndarray) -> np.ndarray:
    """(frames, rows, cols, samples) -> (frames * samples, rows, cols) grey planes for the network."""
    f, r, c, s = array.shape
    return array.transpose(0, 3, 1, 2).reshape(f * s, r, c)


def _encode(predictor: ae_runtime.AePredictor, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The encoder over ``PLANES_AT_ONCE`` planes at a time: a 120-frame colour cine is 360
    planes, whose activations at once would take gigabytes."""
    parts = [predictor.encode(planes[i : i + PLANES_AT_ONCE]) for i in range(0, len(planes), PLANES_AT_ONCE)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]  # three arrays, as the annotation says; mypy sees a tuple of unknown length


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
