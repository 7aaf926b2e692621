"""The protected copy in JPEG 2000 lossless, for routes with ``protected_syntax: lossless``.

Runs after the route's transforms, so it sees what Orthanc would otherwise store
uncompressed: a decoded and redacted JPEG, a noise_key or preview image, an untouched
native original. It compresses only where that pays and gives the very words back: the
result is decoded at once and compared with the native value, and kept only if it is
equal and smaller (a ciphertext or full-strength noise image does not compress; a 32-bit
image the encoder does not take stays as it was; big endian too). Pixel data still in its
original compressed syntax (``none`` or ``coverless`` on a JPEG) is left alone.

The record holds what the native value had around the samples (transfer syntax, layout,
padding), so restore puts back the exact value the earlier stages' restores expect.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless

from gateway import frames
from gateway.frames import Layout
from gateway.plugin import Context, PluginError

NAME = "lossless"
# openjpeg logs one INFO line per encoded tile: noise for every object at the gateway's INFO level
logging.getLogger("openjpeg").setLevel(logging.WARNING)


class LosslessCopy:
    """Store the protected pixels as JPEG 2000 lossless where that is exact and smaller."""

    name = NAME
    series_level = False

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        return [self._protect(ds) for ds in series]

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        for ds, record in zip(series, records, strict=True):
            if record:
                head, tail = _unpack(record)
                layout = Layout.from_json(head["layout"])
                image = frames.read(ds)
                if image.array.shape != (layout.frames, layout.rows, layout.cols, layout.samples):
                    raise PluginError("the lossless copy does not match its record")
                _put_native(ds, frames.pack(image.array, layout) + tail, head)

    def _protect(self, ds: Dataset) -> bytes:
        if not frames.has_pixels(ds) or not frames.is_native(ds) or not ds.file_meta.TransferSyntaxUID.is_little_endian:
            return b""  # compressed already, or big endian (pydicom writes no big-endian dataset little endian)
        value = bytes(ds.PixelData)
        layout = frames.native_layout(ds)
        head = {"ts": str(ds.file_meta.TransferSyntaxUID), "layout": layout.to_json(),
                "photometric": str(ds.PhotometricInterpretation), "vr": ds["PixelData"].VR,
                "planar_configuration": ds.get("PlanarConfiguration")}
        try:
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
            exact = frames.pack(frames.read(ds).array, layout) == value[: layout.image_bytes]
        except Exception:  # noqa: BLE001 - an encoder that cannot take it: the copy stays uncompressed
            exact = False
        if exact and len(ds.PixelData) < len(value):
            return _pack(head, value[layout.image_bytes :])
        _put_native(ds, value, head)
        return b""


def _put_native(ds: Dataset, value: bytes, head: dict[str, Any]) -> None:
    ds.file_meta.TransferSyntaxUID = UID(head["ts"])
    ds.PixelData = value
    ds["PixelData"].VR = head["vr"]
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = head["photometric"]
    if head["planar_configuration"] is None:
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
    else:
        ds.PlanarConfiguration = head["planar_configuration"]


def _pack(head: dict[str, Any], tail: bytes) -> bytes:
    text = json.dumps(head).encode()
    return struct.pack(">I", len(text)) + text + tail


def _unpack(record: bytes) -> tuple[dict[str, Any], bytes]:
    try:
        (size,) = struct.unpack_from(">I", record)
        return json.loads(record[4 : 4 + size]), record[4 + size :]
    except (struct.error, ValueError):
        raise PluginError("the lossless copy record is malformed") from None
