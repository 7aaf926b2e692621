"""What restores one instance exactly: the int8 latent and a lossless code of the image.

Format 2 (magic ``AEAES2``). The exact original is coded with JPEG XL lossless (libjxl
through imagecodecs), each frame offset by its own minimum so that it is a small
unsigned image of ``bit_length(max - min)`` bits; the latent is coded the same way (int8
offset to uint8, channels stacked). Measured on the bench images (bench/ae_aes.py,
effort 4), latent + JPEG XL of the image stores 0.62-1.03x JPEG 2000 lossless of the
image, where format 1 (latent + zigzag residual ``original - prediction``, zstd) stored
1.14-2.4x; even JPEG XL of that residual codes 1.02-2.9x larger than JPEG XL of the image.
A latent of 1/16 value per pixel carries none of the pixel noise that lossless coding
pays for (conditioning a causal coder's contexts on the prediction saves under 1.5% in
entropy, less than the latent costs), and its blocky error adds to the residual. So the
latent travels beside the lossless code (the paper's encrypted features; the preview)
rather than under it.

JPEG XL lossless decoding is integer arithmetic, the same on every machine; the
gateway's SHA-256 check of the rebuilt original remains the proof.

Colour frames are coded as one JPEG XL colour image each (its reversible colour transform
does the decorrelation, losslessly, on the stored samples). An original whose pixel value
had to be decoded (JPEG, JPEG-LS, JPEG 2000, RLE, subsampled YBR) carries that encoded value
itself in place of the frame codes (``codes: "original"``): no encoder gives back another's
bytes, and a second lossless code of the same pixels beside it would only add bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import imagecodecs
import numpy as np

from gateway import framing
from gateway.frames import Layout
from gateway.plugin import PluginError

MAGIC = b"AEAES2"
LATENT_EFFORT = 3  # the latent is small: higher efforts gain nothing measurable on it


@dataclass
class Payload:
    model: str
    layout: Layout
    latent: np.ndarray  # int8 (frames * samples, C, h, w)
    frames: np.ndarray | None  # (frames, rows, cols, samples) stored words, native byte order
    tail: bytes  # pixel value bytes after the frames (padding)
    original: bytes | None = None  # the original encoded pixel value, in place of ``frames``

    def encode(self, effort: int) -> bytes:
        head: dict[str, object] = {"model": self.model, **self.layout.to_json(),
                                   "latent_shape": list(self.latent.shape)}
        blobs = [MAGIC, b"", code_latent(self.latent)]
        if self.original is not None:
            head["codes"] = "original"
            blobs.append(self.original)
        else:
            assert self.frames is not None
            lo = [int(f.min()) for f in self.frames]
            head.update(codes="jxl", lo=lo)
            blobs += [code_frame(frame, offset, effort) for frame, offset in zip(self.frames, lo, strict=True)]
            blobs.append(self.tail)
        blobs[1] = json.dumps(head).encode()
        return framing.pack(blobs)

    @classmethod
    def decode(cls, data: bytes) -> Payload:
        blobs = framing.unpack(data)
        if not blobs or blobs[0] != MAGIC:
            raise PluginError("ae_aes payload has an unknown format version")
        try:
            head = json.loads(blobs[1])
            layout = Layout.from_json(head)
            latent = (_unjxl(blobs[2]).astype(np.int16) - 128).astype(np.int8).reshape(head["latent_shape"])
            if head.get("codes", "jxl") == "original":
                if len(blobs) != 4:
                    raise ValueError("blob count")
                return cls(head["model"], layout, latent, None, b"", original=blobs[3])
            if len(blobs) != 4 + layout.frames:
                raise ValueError("blob count")
            frames = np.stack([_unjxl(b).astype(np.int64) + lo for b, lo in zip(blobs[3:-1], head["lo"], strict=True)])
        except (ValueError, KeyError, TypeError, RuntimeError, imagecodecs.JpegxlError):
            raise PluginError("ae_aes payload is malformed") from None
        frames = frames.reshape((*frames.shape[:3], -1))
        if frames.shape != (layout.frames, layout.rows, layout.cols, layout.samples):
            raise PluginError("ae_aes payload's image does not match its layout")
        native = np.dtype(layout.dtype).newbyteorder("=")
        return cls(head["model"], layout, latent, frames.astype(native), blobs[-1])


def code_latent(latent: np.ndarray) -> bytes:
    """The int8 latent (planes, C, h, w) as one uint8 JPEG XL image, channels stacked."""
    image = (latent.astype(np.int16) + 128).astype(np.uint8).reshape(-1, latent.shape[-1])
    return _jxl(image, 8, LATENT_EFFORT)


def code_frame(frame: np.ndarray, offset: int, effort: int) -> bytes:
    """One frame (rows, cols, samples) minus ``offset`` (its minimum), in as few bits as its range needs."""
    shifted = frame.astype(np.int64) - offset
    bits = max(int(shifted.max()).bit_length(), 1)
    image = shifted[..., 0] if shifted.shape[-1] == 1 else shifted
    return _jxl(image.astype(np.uint8 if bits <= 8 else np.uint16), bits, effort)


def _jxl(image: np.ndarray, bits: int, effort: int) -> bytes:
    return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=effort, bitspersample=bits, numthreads=1))


def _unjxl(data: bytes) -> np.ndarray:
    image = imagecodecs.jpegxl_decode(data, numthreads=1)
    if image.ndim not in (2, 3):
        raise ValueError("not an image")
    return image
