"""noise_key: exact round trips on many pixel layouts, keyed noise, strength, quarantine."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from gateway.keyring import Keyring
from gateway.plugin import Context, PluginError
from gateway.protect import Quarantine, protect_series
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from models.training.noise_key_data import image_dataset
from plugins.noise_key import NoiseKeyTransform
from plugins.noise_key.noise import gaussian
from plugins.noise_key.record import Record
from plugins.noise_key.samples import SampleLayout
from plugins.noise_key.unpack import unpack, unwrap
from testkit import synthetic
from tests.conftest import encode

CTX = Context(series_key=b"\x11" * 32)


def _image(allocated: int, stored: int, signed: bool, frames: int = 1, samples: int = 1, rows: int = 33,
           cols: int = 31, big_endian: bool = False, spare_garbage: bool = False, seed: int = 0) -> Dataset:
    """A native image whose words use exactly the given layout (random values)."""
    rng = np.random.default_rng(seed)
    count = rows * cols * frames * samples
    low = rng.integers(0, 1 << stored, count, dtype=np.uint64)
    spare_mask = ((1 << allocated) - 1) ^ ((1 << stored) - 1)
    if spare_garbage:
        words = low | (rng.integers(0, 1 << allocated, count, dtype=np.uint64) & np.uint64(spare_mask))
    elif signed:
        words = np.where(low >> np.uint64(stored - 1), low | np.uint64(spare_mask), low)
    else:
        words = low
    dtype = np.dtype(f"{'>' if big_endian else '<'}u{allocated // 8}")
    value = words.astype(dtype).tobytes()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = value + (b"\0" if len(value) % 2 else b"")
    return ds


LAYOUTS = [
    dict(allocated=8, stored=8, signed=False),  # odd length: the padding byte must survive
    dict(allocated=8, stored=8, signed=False, samples=3, frames=2),
    dict(allocated=16, stored=12, signed=False),
    dict(allocated=16, stored=12, signed=True),
    dict(allocated=16, stored=14, signed=True, big_endian=True),
    dict(allocated=16, stored=16, signed=True, frames=3),
    dict(allocated=16, stored=12, signed=False, spare_garbage=True),  # overlay bits in the spare bits
    dict(allocated=16, stored=10, signed=True, spare_garbage=True),
    dict(allocated=32, stored=32, signed=False),
    dict(allocated=32, stored=20, signed=True),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_round_trip_is_exact_and_every_protected_sample_is_valid(layout: dict) -> None:  # type: ignore[type-arg]
    ds = _image(**layout)
    original = bytes(ds.PixelData)
    records = NoiseKeyTransform().protect([ds], CTX)
    protected = bytes(ds.PixelData)
    assert len(protected) == len(original) and protected != original
    lay = SampleLayout.of(ds)
    words = lay.words(protected)
    assert np.array_equal(lay.canonical(lay.low(words)), words)  # spare bits say nothing about the original
    changed = np.mean(lay.words(original) != words)
    assert changed > 0.9
    if len(original) > lay.length:
        assert protected[lay.length :] == original[lay.length :]
    NoiseKeyTransform().restore([ds], records, CTX)
    assert bytes(ds.PixelData) == original


def test_the_edge_unpacks_an_unaltered_copy_exactly_with_the_key() -> None:
    """As a CT keeps headroom: signed 14-bit values from -1024 to 3000."""
    original = np.random.default_rng(5).integers(-1024, 3001, (64, 48))
    ds = image_dataset(original, 14, signed=True)
    lay = SampleLayout.of(ds)
    [record] = NoiseKeyTransform().protect([ds], CTX)
    copy = lay.low(lay.words(bytes(ds.PixelData))).astype(np.int64).reshape(original.shape)
    assert np.array_equal(unpack(copy, record, CTX, str(ds.SOPInstanceUID), 14, signed=True), original)
    stranger = Context(series_key=b"\x12" * 32)
    assert np.mean(unpack(copy, record, stranger, str(ds.SOPInstanceUID), 14, signed=True) == original) < 0.01


def test_the_wrong_key_does_not_restore() -> None:
    ds = _image(16, 12, False)
    original = SampleLayout.of(ds).words(bytes(ds.PixelData))
    records = NoiseKeyTransform().protect([ds], CTX)
    NoiseKeyTransform().restore([ds], records, Context(series_key=b"\x12" * 32))
    restored = SampleLayout.of(ds).words(bytes(ds.PixelData))
    assert np.mean(restored == original) < 0.01


def test_a_record_for_another_instance_does_not_restore() -> None:
    """The noise key names the SOP Instance UID: swapping two instances' records fails."""
    a, b = _image(16, 12, False, seed=1), _image(16, 12, False, seed=2)
    originals = [bytes(a.PixelData), bytes(b.PixelData)]
    records = NoiseKeyTransform().protect([a, b], CTX)
    NoiseKeyTransform().restore([a, b], records[::-1], CTX)
    assert bytes(a.PixelData) != originals[0] and bytes(b.PixelData) != originals[1]


def _leak(strength: float) -> float:
    """Correlation of what anyone without the key sees (protected pixels, unwrapped
    around their emptiest stretch) with the original pixels."""
    ds = synthetic.ct_series(1, size=128)[0]
    original = np.frombuffer(ds.PixelData, "<u2").astype(float)
    NoiseKeyTransform(strength).protect([ds], CTX)
    protected = unwrap(np.frombuffer(ds.PixelData, "<u2"), 4096, signed=False)
    return float(np.corrcoef(original, protected)[0, 1])


def test_strength_sets_how_much_shows_through() -> None:
    weak, medium, full = _leak(0.01), _leak(0.1), _leak(1.0)
    assert weak > 0.95 and 0.2 < medium < 0.9 and abs(full) < 0.05


def test_full_strength_stores_nearly_uniform_values() -> None:
    ds = synthetic.ct_series(1, size=256)[0]
    NoiseKeyTransform(1.0).protect([ds], CTX)
    counts = np.bincount(np.frombuffer(ds.PixelData, "<u2") >> 8, minlength=16)  # 16 bins over 12 bits
    assert counts.size == 16 and counts.min() > 0.9 * counts.mean()


def test_restore_takes_the_strength_from_the_record() -> None:
    """The gateway restores with default settings; the sealed record carries the strength."""
    ds = _image(16, 16, True)
    original = bytes(ds.PixelData)
    records = NoiseKeyTransform(0.05).protect([ds], CTX)
    assert Record.decode(records[0]).strength == 0.05
    NoiseKeyTransform().restore([ds], records, CTX)
    assert bytes(ds.PixelData) == original


def test_every_protection_draws_fresh_noise() -> None:
    a, b = _image(16, 12, False), _image(16, 12, False)
    NoiseKeyTransform().protect([a], CTX)
    NoiseKeyTransform().protect([b], CTX)
    assert bytes(a.PixelData) != bytes(b.PixelData)


@pytest.mark.parametrize("strength", [0, -0.5, 1.5, "0.5", True, None])
def test_a_bad_strength_is_refused(strength: object) -> None:
    with pytest.raises(PluginError, match="strength"):
        NoiseKeyTransform(strength)  # type: ignore[arg-type]


def test_the_noise_stream_is_frozen() -> None:
    """Stored studies depend on these exact integers; changing the generator breaks them."""
    noise = gaussian(b"\x01" * 32, b"\x02" * 16, 100_000, 1000.0)
    assert hashlib.sha256(noise.astype("<i8").tobytes()).hexdigest()[:16] == "8ce353281213e506"
    assert abs(noise.mean()) < 10 and 990 < noise.std() < 1010


def test_one_bit_pixels_are_a_keyed_pad_and_keep_their_last_byte() -> None:
    ds = _image(8, 8, False, rows=5, cols=7)  # 35 bits: the 5th byte has 5 bits used
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    value = bytearray(np.random.default_rng(3).integers(0, 256, 6, dtype=np.uint8).tobytes())
    ds.PixelData = bytes(value)
    records = NoiseKeyTransform().protect([ds], CTX)
    protected = bytes(ds.PixelData)
    assert protected != bytes(value) and protected[4] >> 3 == value[4] >> 3 and protected[5] == value[5]
    NoiseKeyTransform().restore([ds], records, CTX)
    assert bytes(ds.PixelData) == bytes(value)


def test_other_word_sizes_and_float_pixels_are_refused() -> None:
    ds = _image(8, 8, False)
    ds.BitsAllocated = 12
    with pytest.raises(PluginError, match="BitsAllocated 12"):
        NoiseKeyTransform().protect([ds], CTX)
    flt = _image(32, 32, False)
    flt.FloatPixelData = flt.PixelData
    del flt.PixelData
    with pytest.raises(PluginError, match="float"):
        NoiseKeyTransform().protect([flt], CTX)


def _files(*names: str) -> list[bytes]:
    out = []
    for name in names:
        path = get_testdata_file(name)
        assert path is not None, f"{name} missing: install pydicom-data"
        out.append(Path(path).read_bytes())
    return out


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["693_UNCI.dcm", "OBXXXX1A_2frame.dcm", "gdcm-US-ALOKA-16_big.dcm", "US1_J2KR.dcm",
                                  "SC_rgb_jpeg.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "liver.dcm", "liver_expb_1frame.dcm"])
def test_real_files_through_the_gateway_come_back_exactly(name: str, keyring: Keyring) -> None:
    [raw] = _files(name)
    route = RouteSpec(plugin="noise_key")
    [out] = protect_series([raw], route, keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    original = pydicom.dcmread(io.BytesIO(raw))
    assert not protected.file_meta.TransferSyntaxUID.is_compressed  # decoded, then noise added
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.array_equal(protected.pixel_array, original.pixel_array)
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


def test_a_synthetic_series_through_the_gateway(keyring: Keyring) -> None:
    raws = [encode(ds) for ds in synthetic.ct_series(3, size=64)]
    outs = protect_series(raws, RouteSpec(plugin="noise_key", plugin_settings={"strength": 0.5}), keyring,
                          MemoryDataKeys())
    for out, raw in zip(outs, raws, strict=True):
        assert pydicom.dcmread(io.BytesIO(out.data)).PixelData != pydicom.dcmread(io.BytesIO(raw)).PixelData
    assert [r.data for r in restore_series([o.data for o in outs], keyring)] == raws


def test_undecodable_compressed_pixels_are_quarantined(keyring: Keyring) -> None:
    ds = synthetic.ct_series(1, size=16)[0]
    ds.BitsStored, ds.HighBit = 8, 7
    ds.BitsAllocated = 8
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not really a JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(Quarantine, match="cannot be decoded"):
        protect_series([encode(ds)], RouteSpec(plugin="noise_key"), keyring, MemoryDataKeys())
