"""Every pixel transform on every kind of image the gateway decodes: real files, exact restore.

Compressed (JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE), colour (RGB,
YBR_FULL, YBR_FULL_422, JPEG 2000's RCT, planar), palette, big endian and multi-frame files
from pydicom's test data go through the whole protect path and back; the restored bytes
must be the file's. What a transform cannot carry must be quarantined, never forwarded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway import frames
from gateway.envelope import stage_names as envelope_stage_names
from gateway.keyring import Keyring
from gateway.protect import Quarantine, protect_series
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys

TAKEN = [
    "JPEG-LL.dcm",  # JPEG lossless, 16-bit signed NM
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless RGB
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline YBR_FULL_422
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, 10 frames
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless colour with burned-in text
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "US1_J2KR.dcm",  # JPEG 2000 lossless colour ultrasound (YBR_RCT)
    "emri_small_RLE.dcm",  # RLE, 10 frames
    "SC_rgb_rle_16bit_2frame.dcm",  # RLE, 16-bit RGB, 2 frames
    "OBXXXX1A_rle.dcm",  # RLE palette colour ultrasound
    "SC_ybr_full_422_uncompressed.dcm",  # native subsampled YBR
    "examples_ybr_color.dcm",  # JPEG baseline YBR_FULL_422 ultrasound cine, 30 frames
    "color-pl.dcm",  # native RGB, planar
    "SC_rgb_expb_16bit_2frame.dcm",  # big-endian RGB, 2 frames
    "MR_small_padded.dcm",  # native with padding after the samples
]
# ae_aes refuses what its network and lossless code cannot take.
AE_AES_REFUSED = {"SC_rgb_rle_32bit.dcm": "BitsAllocated 32", "liver_1frame.dcm": "1-bit"}


def _raw(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("plugin", ["ae_aes", "noise_key", "coverless"])
@pytest.mark.parametrize("name", TAKEN)
def test_protected_and_restored_byte_exact(name: str, plugin: str, keyring: Keyring) -> None:
    raw = _raw(name)
    [out] = protect_series([raw], RouteSpec(plugin=plugin), keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    original = pydicom.dcmread(io.BytesIO(raw))
    if plugin != "coverless":  # coverless never changes pixels
        assert not protected.file_meta.TransferSyntaxUID.is_compressed  # Orthanc and viewers read it
        assert bytes(protected.PixelData) != bytes(original.PixelData)
        shown = frames.read(protected).array
        if plugin == "noise_key":  # same geometry, other values
            assert shown.shape == frames.read(original).array.shape
        else:
            assert "ENCRYPTED" in protected.ImageType
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(AE_AES_REFUSED))
def test_ae_aes_quarantines_what_it_cannot_carry(name: str, keyring: Keyring) -> None:
    with pytest.raises(Quarantine, match=AE_AES_REFUSED[name]):
        protect_series([_raw(name)], RouteSpec(plugin="ae_aes"), keyring, MemoryDataKeys())


@pytest.mark.filterwarnings("ignore")
def test_ae_aes_preview_of_a_jpeg_colour_cine_is_native_rgb_and_restores(keyring: Keyring) -> None:
    raw = _raw("examples_ybr_color.dcm")
    route = RouteSpec(plugin="ae_aes", plugin_settings={"mode": "preview"})
    [out] = protect_series([raw], route, keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    assert protected.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert protected.PhotometricInterpretation == "RGB" and protected.NumberOfFrames == 30
    preview = protected.pixel_array.astype(np.float64)
    decoded = pydicom.dcmread(io.BytesIO(raw)).pixel_array.astype(np.float64)
    assert preview.shape == decoded.shape
    assert np.corrcoef(preview.ravel(), decoded.ravel())[0, 1] > 0.8  # per channel, so colour survives (speckle is what is lost)
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


def test_frames_write_back_native_layouts_byte_for_byte() -> None:
    for name in ("color-pl.dcm", "SC_rgb_expb_16bit_2frame.dcm", "MR_small_padded.dcm", "SC_rgb_small_odd.dcm"):
        ds = pydicom.dcmread(io.BytesIO(_raw(name)))
        value = bytes(ds.PixelData)
        image = frames.read(ds)
        assert image.encoded is None and image.array.shape[-1] == int(ds.SamplesPerPixel)
        frames.write(ds, image)
        assert bytes(ds.PixelData) == value


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("name", "plugin", "settings", "compressed"), [
    ("693_UNCR.dcm", "none", {}, True),  # native CT: JPEG 2000 in Orthanc, a fifth of the bytes
    ("color-pl.dcm", "none", {}, True),  # planar RGB: planar again on restore
    ("MR_small_padded.dcm", "none", {}, True),  # the padding after the samples comes back
    ("emri_small_RLE.dcm", "ae_aes", {"mode": "preview"}, True),  # decoded, previewed, recompressed
    ("MR_small.dcm", "noise_key", {}, False),  # full-strength noise does not compress: stays uncompressed
    ("MR_small.dcm", "ae_aes", {}, False),  # ciphertext does not compress
    ("SC_rgb_32bit.dcm", "none", {}, False),  # 32-bit: the encoder does not take it
    ("SC_rgb_expb_16bit_2frame.dcm", "none", {}, None),  # big endian: whatever the encoder does, exact
    ("JPEG-LL.dcm", "none", {}, None),  # untouched JPEG original: left in its own syntax
])
def test_a_lossless_route_stores_jpeg2000_where_exact_and_smaller(name: str, plugin: str, settings: dict,  # type: ignore[type-arg]
                                                                    compressed: bool | None, keyring: Keyring) -> None:
    raw = _raw(name)
    route = RouteSpec(plugin=plugin, plugin_settings=settings, protected_syntax="lossless")
    [out] = protect_series([raw], route, keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    syntax = protected.file_meta.TransferSyntaxUID
    if compressed is not None:
        assert (syntax == pydicom.uid.JPEG2000Lossless) is compressed
    if compressed:
        assert len(out.data) < 0.9 * len(protect_series([raw], RouteSpec(plugin=plugin, plugin_settings=settings),
                                                        keyring, MemoryDataKeys())[0].data)
    if name == "JPEG-LL.dcm":
        assert syntax == pydicom.dcmread(io.BytesIO(raw)).file_meta.TransferSyntaxUID
    assert "lossless" in envelope_stage_names(protected)
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


@pytest.mark.filterwarnings("ignore")
def test_a_redacted_jpeg_cine_is_stored_jpeg2000_lossless_and_restores(keyring: Keyring) -> None:
    raw = _raw("examples_ybr_color.dcm")
    corner = {"detectors": ["rules"], "default_rules": False, "pad": 0,
              "rules": [{"name": "corner", "regions": [[0, 0, 8, 6]]}]}
    [out] = protect_series([raw], RouteSpec(redaction=corner, protected_syntax="lossless"), keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    assert protected.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert envelope_stage_names(protected) == ["redaction", "none", "lossless"]
    assert (protected.pixel_array[:, 0:6, 0:8, :] == 0).all()  # blank in every frame, as stored
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("plugin", ["ae_aes", "noise_key"])
def test_a_multi_frame_object_missing_frames_is_quarantined(plugin: str, keyring: Keyring) -> None:
    ds = pydicom.dcmread(io.BytesIO(_raw("emri_small_RLE.dcm")))
    ds.NumberOfFrames = 11  # the header promises a frame the pixel data does not hold
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(Quarantine, match="cannot be decoded"):
        protect_series([buf.getvalue()], RouteSpec(plugin=plugin), keyring, MemoryDataKeys())


@pytest.mark.filterwarnings("ignore")
def test_an_altered_lossless_copy_never_restores_to_something_else(keyring: Keyring) -> None:
    raw = _raw("693_UNCR.dcm")
    [out] = protect_series([raw], RouteSpec(protected_syntax="lossless"), keyring, MemoryDataKeys())
    ds = pydicom.dcmread(io.BytesIO(out.data))
    fragments = list(pydicom.encaps.generate_fragments(ds.PixelData))
    stream = bytearray(fragments[0])
    stream[len(stream) // 2] ^= 0x40  # one bit of the JPEG 2000 code stream
    ds.PixelData = pydicom.encaps.encapsulate([bytes(stream)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    [restored] = restore_series([buf.getvalue()], keyring)
    assert restored.data is None and restored.error
