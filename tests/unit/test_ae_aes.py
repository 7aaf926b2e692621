"""ae_aes: exact restore whatever the image, nothing readable without the key."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless

from gateway import frames
from gateway.keyring import Keyring
from gateway.plugin import Context, PluginError
from gateway.protect import protect_series
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from models import ae_runtime
from plugins.ae_aes import AeAesTransform
from plugins.ae_aes.payload import MAGIC, Payload
from testkit import synthetic
from tests.conftest import encode

CTX = Context(series_key=b"\x01" * 32)


def _series(n: int = 2, size: int = 64) -> list[Dataset]:
    return synthetic.ct_series(n, size=size)


def _roundtrip(series: list[Dataset], **settings: object) -> list[bytes]:
    """Protect then restore in place; returns the protected pixel values."""
    originals = [bytes(ds.PixelData) for ds in series]
    records = AeAesTransform(**settings).protect(series, CTX)  # type: ignore[arg-type]
    protected = [bytes(ds.PixelData) for ds in series]
    AeAesTransform().restore(series, records, CTX)  # restore needs no settings
    assert [bytes(ds.PixelData) for ds in series] == originals
    return protected


@pytest.mark.parametrize("mode", ["encrypted", "preview"])
def test_through_the_gateway_the_digest_proves_the_exact_restore(keyring: Keyring, mode: str) -> None:
    raws = [encode(ds) for ds in synthetic.ct_series(3, size=80)]
    route = RouteSpec(plugin="ae_aes", plugin_settings={"mode": mode})
    protected = protect_series(raws, route, keyring, MemoryDataKeys())
    restored = restore_series([p.data for p in protected], keyring)
    assert [r.error for r in restored] == [None] * 3
    assert [r.data for r in restored] == raws


def test_odd_sizes_signed_8_bit_big_endian_and_multi_frame() -> None:
    rng = np.random.default_rng(3)
    signed = _series(1, size=64)
    signed[0].PixelRepresentation = 1
    signed[0].PixelData = (rng.normal(0, 300, (64, 64))).astype("<i2").tobytes()
    _roundtrip(signed)

    odd = _series(1, size=64)
    odd[0].Rows, odd[0].Columns, odd[0].BitsAllocated, odd[0].BitsStored, odd[0].HighBit = 33, 47, 8, 8, 7
    odd[0].PixelData = rng.integers(0, 256, 33 * 47, dtype=np.uint8).tobytes() + b"\0"  # odd length padded
    _roundtrip(odd)

    big = _series(1, size=64)
    big[0].file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big[0].PixelData = np.frombuffer(big[0].PixelData, "<u2").astype(">u2").tobytes()
    _roundtrip(big)

    multi = _series(1, size=48)
    frames = np.stack([synthetic.phantom_slice(z, 48) + 1024 for z in (0.2, 0.5, 0.8)]).astype("<u2")
    frames[1, 5, 7] = 0xFFFF  # a word with bits set above BitsStored (12)
    multi[0].NumberOfFrames = 3
    multi[0].PixelData = frames.tobytes()
    _roundtrip(multi)

    flat = _series(1, size=16)  # a constant image: zero bits of range
    flat[0].PixelData = np.full((16, 16), 3000, "<u2").tobytes()
    _roundtrip(flat)

    noise = _series(1, size=64)  # full 16-bit range, incompressible
    noise[0].PixelData = rng.integers(0, 1 << 16, (64, 64), dtype=np.uint16).astype("<u2").tobytes()
    _roundtrip(noise, effort=1)


def test_the_paper_model_restores_exactly_too() -> None:
    _roundtrip(_series(1, size=40), model="ae_paper")


def test_restore_runs_no_network_so_no_machine_can_compute_it_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    series = _series(2)
    originals = [bytes(ds.PixelData) for ds in series]
    records = AeAesTransform(effort=7).protect(series, CTX)

    def no_network(*_: object) -> None:
        raise AssertionError("restore loaded a network")

    monkeypatch.setattr(ae_runtime, "load", no_network)
    AeAesTransform().restore(series, records, CTX)
    assert [bytes(ds.PixelData) for ds in series] == originals


def test_a_payload_of_another_format_or_damaged_fails_loudly() -> None:
    series = _series(1)
    image = frames.read(series[0])
    data = Payload(model="ae_lite", layout=image.layout, latent=np.zeros((1, 4, 8, 8), np.int8),
                   frames=image.array, tail=b"").encode(effort=3)
    assert np.array_equal(Payload.decode(data).frames, image.array)
    with pytest.raises(PluginError, match="format version"):
        Payload.decode(data.replace(MAGIC, b"AEAES1", 1))  # format 1 (zstd residual) never shipped
    blobs, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        blobs.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    blobs[3] = blobs[3][: len(blobs[3]) // 2]  # the image's JPEG XL code cut short
    with pytest.raises(PluginError, match="malformed"):
        Payload.decode(b"".join(struct.pack(">I", len(b)) + b for b in blobs))


def test_what_orthanc_stores_is_ciphertext_in_a_valid_image() -> None:
    series = _series(2, size=128)
    original = np.frombuffer(series[0].PixelData, "<u2").astype(np.float64)
    AeAesTransform().protect(series, CTX)
    ds = pydicom.dcmread(io.BytesIO(encode(series[0])))
    assert ds.Rows < 128 and ds.Columns == 128 and ds.BitsAllocated == 16  # smaller than the original
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)  # a decodable image
    assert "ENCRYPTED" in ds.ImageType
    data = np.frombuffer(ds.PixelData, np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = len(data) / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # uniform bytes (255 degrees of freedom; an image scores in the 100000s)
    words = np.frombuffer(ds.PixelData, "<u2").astype(np.float64)
    n = min(len(words), len(original))
    middle = original[(len(original) - n) // 2 :][:n]  # the image's middle rows (its top rows are air)
    assert middle.std() > 0 and abs(np.corrcoef(words[:n], middle)[0, 1]) < 0.05


def test_altered_ciphertext_or_another_key_fails_loudly() -> None:
    series = _series(1)
    records = AeAesTransform().protect(series, CTX)
    with pytest.raises(PluginError, match="authenticate"):
        AeAesTransform().restore(series, records, Context(series_key=b"\x02" * 32))
    value = bytearray(series[0].PixelData)
    value[40] ^= 1
    series[0].PixelData = bytes(value)
    with pytest.raises(PluginError, match="authenticate"):
        AeAesTransform().restore(series, records, CTX)


def test_preview_is_marked_derived_and_lossy_and_resembles_the_original() -> None:
    series = _series(1, size=128)
    original = np.frombuffer(series[0].PixelData, "<u2").astype(np.float64)
    for denoise in (False, True):
        series = _series(1, size=128)
        preview = np.frombuffer(_roundtrip(series, mode="preview", denoise=denoise)[0], "<u2").astype(np.float64)
        assert preview.shape == original.shape and not np.array_equal(preview, original)
        assert np.corrcoef(preview, original)[0, 1] > 0.9
    AeAesTransform(mode="preview").protect(series, CTX)
    assert list(series[0].ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert series[0].LossyImageCompression == "01"
    assert series[0].DerivationCodeSequence[0].CodeValue == "113040"


def test_what_it_cannot_take_is_refused_not_passed() -> None:
    wide = _series(1)
    wide[0].BitsAllocated, wide[0].BitsStored, wide[0].HighBit = 32, 32, 31
    wide[0].PixelData = bytes(4 * 64 * 64)
    with pytest.raises(PluginError, match="BitsAllocated 32"):
        AeAesTransform().protect(wide, CTX)
    garbage = _series(1)  # says JPEG 2000, holds native words: no decoder reads it
    garbage[0].file_meta.TransferSyntaxUID = JPEG2000Lossless
    with pytest.raises(PluginError, match="cannot be decoded"):
        AeAesTransform().protect(garbage, CTX)
    floats = _series(1)
    del floats[0].PixelData
    floats[0].FloatPixelData = bytes(4 * 64 * 64)
    with pytest.raises(PluginError, match="float"):
        AeAesTransform().protect(floats, CTX)
    with pytest.raises(PluginError, match="mode"):
        AeAesTransform(mode="plain")
    with pytest.raises(PluginError, match="effort"):
        AeAesTransform(effort=10)
