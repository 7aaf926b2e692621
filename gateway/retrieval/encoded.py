"""Send a verified object as the very bytes that were verified, not parsed and re-encoded.

pynetdicom's C-MOVE and C-GET handlers take only a ``Dataset`` from the handler, and its
``send_c_store`` encodes it with ``pynetdicom.dsutils.encode`` (which ``association``
imports by name). ``Verbatim`` is a ``Dataset`` that carries the encoded data set beside the
few attributes pynetdicom reads before encoding (SOP Class and Instance UID, transfer
syntax); ``association.encode`` is wrapped once so that such a dataset, asked for in its own
encoding, is sent as its bytes. Asked for another encoding (pynetdicom converting between
explicit and implicit VR), it is parsed and encoded the ordinary way; every other dataset
goes to pynetdicom's own ``encode`` untouched.

``split`` reads a file's meta information and where its data set starts, without reading
the data set.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import association, dsutils

_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
        b"UR", b"US", b"UT", b"UV"}


class Layout(NamedTuple):
    """Where a file's data set starts and what it says it is (from the file meta and the
    data set's first elements only)."""

    offset: int
    syntax: str
    sop_class: str
    sop_uid: str


class Verbatim(Dataset):
    """A data set that pynetdicom sends as ``data[offset:]`` (see the module docstring)."""

    def __init__(self, data: bytes, layout: Layout) -> None:
        super().__init__()
        syntax = UID(layout.syntax)
        # read from the verified bytes already: not validated again, once per object sent
        self[0x00080016] = DataElement(0x00080016, "UI", layout.sop_class, validation_mode=config.IGNORE)
        self[0x00080018] = DataElement(0x00080018, "UI", layout.sop_uid, validation_mode=config.IGNORE)
        self.file_meta = FileMetaDataset()
        self.file_meta[0x00020010] = DataElement(0x00020010, "UI", syntax, validation_mode=config.IGNORE)
        self.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
        self._data = data
        self._offset = layout.offset
        self._encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)

    def encoded(self, is_implicit_vr: bool, is_little_endian: bool, deflated: bool) -> bytes | None:
        """The data set's bytes when asked for the encoding they are in (deflated data sets
        are left to pynetdicom, which pads them to an even length); otherwise None."""
        if (is_implicit_vr, is_little_endian, deflated) != self._encoding or deflated:
            return None
        return self._data[self._offset:]

    def decoded(self) -> Dataset:
        """The whole object parsed, for pynetdicom to encode in another transfer syntax."""
        return pydicom.dcmread(io.BytesIO(self._data))


def split(data: bytes) -> Layout | None:
    """The layout of ``data`` (a DICOM file), or None where its data set cannot be sent as
    it is: no file meta, a data set not encoded as the meta says, no SOP Class or Instance
    UID among its first elements."""
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_past_group_2)
        offset = fp.tell()
        syntax = UID(str(meta.TransferSyntaxUID))
        if not _encoded_as(data[offset:offset + 6], syntax):
            return None
        head = read_dataset(fp, is_implicit_VR=syntax.is_implicit_VR, is_little_endian=syntax.is_little_endian,
                            stop_when=_past_sop_instance)
        return Layout(offset, str(syntax), str(head.SOPClassUID), str(head.SOPInstanceUID))
    except Exception:  # noqa: BLE001 - anything unusual is sent the ordinary way, parsed
        return None


def _past_group_2(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _past_sop_instance(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > 0x00080018


def _encoded_as(first: bytes, syntax: UID) -> bool:
    """The data set's first element looks encoded as ``syntax`` says (explicit VR: a VR
    follows the tag), the way pydicom itself tells implicit from explicit."""
    if syntax.is_deflated or not syntax.is_little_endian or len(first) < 6:
        return False
    return (first[4:6] in _VRS) != syntax.is_implicit_VR


def _encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    if isinstance(ds, Verbatim):
        data = ds.encoded(is_implicit_vr, is_little_endian, deflated)
        if data is not None:
            return data
        ds = ds.decoded()
    return dsutils.encode(ds, is_implicit_vr, is_little_endian, deflated)


association.encode = _encode  # pynetdicom's send_c_store calls it by this name
