"""The payload as AES-256-GCM ciphertext in place of the image, and back.

What Orthanc stores must show nothing of the image, and storing the payload there
(rather than in the envelope next to a noise image of the original's size) keeps the
stored bytes close to the payload's size. The protected object stays a valid image:
16-bit MONOCHROME2, the original width, as many rows as the ciphertext needs. Its
PixelData is ``nonce (12) | ciphertext | tag (16)``; the plaintext is ``length (4) |
payload | zero padding``, so every byte is ciphertext. The key is derived from the
series key; the additional data binds the ciphertext to the instance's SOP Instance UID.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from gateway.plugin import Context, PluginError

KEY_LABEL = "ae_aes/pixels/1"
OVERHEAD = 12 + 4 + 16
# Attributes that describe the original pixels and would contradict the ciphertext image.
STALE = ("PlanarConfiguration", "PixelPaddingValue", "PixelPaddingRangeLimit", "SmallestImagePixelValue",
         "LargestImagePixelValue", "WindowCenter", "WindowWidth", "VOILUTSequence")


def _aad(ds: Dataset) -> bytes:
    return b"ae_aes/1|" + str(ds.SOPInstanceUID).encode()


def seal_into(ds: Dataset, payload: bytes, ctx: Context) -> None:
    """Replace ``ds``'s image with the ciphertext of ``payload``."""
    cols = max(int(ds.Columns), 16)
    rows = -(-(len(payload) + OVERHEAD) // (2 * cols))
    plain = struct.pack(">I", len(payload)) + payload
    plain += b"\0" * (2 * rows * cols - OVERHEAD - len(payload))
    nonce = os.urandom(12)
    ds.PixelData = nonce + AESGCM(ctx.key(KEY_LABEL)).encrypt(nonce, plain, _aad(ds))
    ds["PixelData"].VR = "OW"
    if ds.file_meta.TransferSyntaxUID.is_compressed:  # a JPEG (...) original: the ciphertext is native
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds["PixelData"].is_undefined_length = False
    for keyword in STALE:
        if keyword in ds:
            delattr(ds, keyword)
    if "NumberOfFrames" in ds:  # multi-frame classes require it: the ciphertext is one frame
        ds.NumberOfFrames = 1
    if "PerFrameFunctionalGroupsSequence" in ds:
        ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:1])
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ImageType = ["DERIVED", "SECONDARY", "ENCRYPTED"]
    ds.DerivationDescription = "Pixel data replaced by AES-256-GCM ciphertext (ae_aes); restore through the gateway"


def open_from(ds: Dataset, ctx: Context) -> bytes:
    """The payload sealed in ``ds``'s PixelData; PluginError if it does not authenticate."""
    value = bytes(ds.PixelData)
    if len(value) < OVERHEAD:
        raise PluginError("ae_aes ciphertext is too short")
    try:
        plain = AESGCM(ctx.key(KEY_LABEL)).decrypt(value[:12], value[12:], _aad(ds))
    except InvalidTag:
        raise PluginError("ae_aes pixel ciphertext does not authenticate (altered, or another key)") from None
    (size,) = struct.unpack_from(">I", plain)
    return plain[4 : 4 + size]
