"""The noise_key pipeline on plain arrays, for the denoiser's training and the benchmark.

An image goes through the real plugin (``NoiseKeyTransform``) as a minimal DICOM
dataset, then through a simulated lossy copy of the protected pixels, then through the
edge-side unpacking with the key (``plugins.noise_key.unpack``). The lossy copy is what a
PACS transcoding to JPEG (ISO 10918) would keep: 8-bit JPEG for 8-bit pixels, 12-bit JPEG
(process 4) otherwise, with the low bits dropped first when BitsStored is above 12. JPEG
encodes the stored bit pattern (the protected value modulo 2**BitsStored), so its error
adds to the pattern and survives the modular subtraction as an additive error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.plugin import Context
from models.noise_key_denoiser import jpeg_error_sd
from plugins.noise_key import NoiseKeyTransform, noise_key
from plugins.noise_key.noise import gaussian
from plugins.noise_key.record import Record
from plugins.noise_key.samples import SampleLayout
from plugins.noise_key.unpack import unpack


@dataclass(frozen=True)
class Unpacked:
    """One image through the pipeline (all arrays in stored-value units, image shape)."""

    protected: np.ndarray  # what the PACS holds, as signed/unsigned stored values
    lossy: np.ndarray  # the lossy copy's bit pattern (modulo 2**bits)
    unpacked: np.ndarray  # lossy copy minus the keyed noise, unwrapped (float64)
    error_sd: float  # the copy's expected error sd, from its quantisation tables (0: exact)
    noise: np.ndarray  # the keyed integer noise (int64), as the edge regenerates it


def image_dataset(values: np.ndarray, bits_stored: int, signed: bool) -> Dataset:
    """A minimal single-frame grayscale dataset holding ``values`` (stored values)."""
    allocated = 8 if bits_stored <= 8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    pattern = np.mod(values.astype(np.int64), 1 << bits_stored)
    layout = SampleLayout(allocated, bits_stored, signed, True, values.size * allocated // 8, values.size)
    ds.PixelData = layout.pack(layout.canonical(pattern.astype(f"u{allocated // 8}").ravel()), b"")
    return ds


def jpeg_copy(pattern: np.ndarray, bits_stored: int, quality: int) -> tuple[np.ndarray, float]:
    """The pattern (values in [0, 2**bits)) after a JPEG round trip at ``quality``, and
    the copy's expected error sd (stored-value units) read from its quantisation tables."""
    import imagecodecs  # the bench extra; only the lossy simulation needs it

    if bits_stored <= 8:
        stream = imagecodecs.jpeg8_encode(pattern.astype(np.uint8), level=quality)
        return imagecodecs.jpeg8_decode(stream).astype(np.int64), jpeg_error_sd(bytes(stream))
    drop = max(bits_stored - 12, 0)
    reduced = np.minimum(np.rint(pattern / (1 << drop)), 4095).astype(np.uint16)
    stream = imagecodecs.jpeg8_encode(reduced, level=quality, bitspersample=12)
    return imagecodecs.jpeg8_decode(stream).astype(np.int64) << drop, jpeg_error_sd(bytes(stream)) * (1 << drop)


def run(values: np.ndarray, bits_stored: int, signed: bool, strength: float, quality: int | None,
        ctx: Context) -> Unpacked:
    """Protect ``values`` with the plugin, make a JPEG copy (``quality`` None: no copy,
    the PACS kept the exact bytes), unpack it with the key."""
    ds = image_dataset(values, bits_stored, signed)
    [record] = NoiseKeyTransform(strength).protect([ds], ctx)
    layout = SampleLayout.of(ds)
    pattern = layout.low(layout.words(bytes(ds.PixelData))).reshape(values.shape).astype(np.int64)
    lossy, error_sd = (pattern, 0.0) if quality is None else jpeg_copy(pattern, bits_stored, quality)
    unpacked = unpack(lossy, record, ctx, str(ds.SOPInstanceUID), bits_stored, signed)
    noise = gaussian(noise_key(ctx, str(ds.SOPInstanceUID)), Record.decode(record).nonce, values.size,
                     strength * layout.modulus).reshape(values.shape)
    return Unpacked(layout.values(pattern), lossy, unpacked, error_sd, noise)
