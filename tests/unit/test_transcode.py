"""Decoding verified originals for workstations that take only uncompressed little endian."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from gateway.transcode import TranscodeError, choose, transcode

ORIGINALS = {  # pydicom's test files: a JPEG baseline (YBR colour), a JPEG 2000, lossless ones, big endian
    "jpeg baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg 2000": "JPEG2000.dcm",
    "jpeg 2000 lossless multiframe": "emri_small_jpeg_2k_lossless.dcm",
    "jpeg lossless": "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "rle": "SC_rgb_rle.dcm",
    "explicit big endian": "MR_small_bigendian.dcm",
}


def original(name: str) -> bytes:
    return Path(get_testdata_file(ORIGINALS[name])).read_bytes()


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("name", ORIGINALS)
@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_decoded_pixels_equal_the_originals(name: str, target: UID) -> None:
    source = read(original(name))
    out = read(transcode(original(name), target))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.file_meta.MediaStorageSOPInstanceUID == source.file_meta.MediaStorageSOPInstanceUID
    assert np.array_equal(out.pixel_array, source.pixel_array)
    assert (out.SOPInstanceUID, out.PatientName, out.Rows, out.Columns) == (
        source.SOPInstanceUID, source.PatientName, source.Rows, source.Columns)
    assert not out.file_meta.TransferSyntaxUID.is_compressed


def test_a_lossy_original_stays_marked_lossy() -> None:
    out = read(transcode(original("jpeg baseline"), ExplicitVRLittleEndian))
    assert out.LossyImageCompression == "01"
    assert out.PhotometricInterpretation == "RGB"  # YBR_FULL decoded to RGB, as the pixels are


def test_what_the_workstation_takes_decides() -> None:
    assert choose(JPEG2000, [JPEG2000, ExplicitVRLittleEndian]) == JPEG2000  # the original as it is
    assert choose(JPEG2000, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]) == ExplicitVRLittleEndian
    assert choose(JPEGBaseline8Bit, [ImplicitVRLittleEndian]) == ImplicitVRLittleEndian
    assert choose(JPEGBaseline8Bit, [RLELossless, JPEGLSLossless]) is None


def test_an_uncompressed_original_in_its_own_syntax_is_returned_as_it_is() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert transcode(data, ExplicitVRLittleEndian) == data
    implicit = read(transcode(data, ImplicitVRLittleEndian))
    assert np.array_equal(implicit.pixel_array, read(data).pixel_array)


def test_damaged_pixel_data_is_a_clear_error() -> None:
    ds = read(original("jpeg 2000"))
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    truncated = next(frame)[:40]  # codestream cut after its header
    ds.PixelData = pydicom.encaps.encapsulate([truncated])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(TranscodeError, match="JPEG 2000 Image Compression pixel data could not be decoded"):
        transcode(buf.getvalue(), ExplicitVRLittleEndian)


def test_only_uncompressed_little_endian_is_written() -> None:
    with pytest.raises(ValueError, match="not JPEG Baseline"):
        transcode(original("jpeg 2000"), JPEGBaseline8Bit)
