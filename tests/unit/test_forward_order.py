"""Parallel forwarding keeps the order that matters: copies of one SOP instance."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.spool import Outgoing
from gateway.worker import _by_instance


def _write(path: Path, sop_uid: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.save_as(path, enforce_file_format=True)
    return path


def test_copies_of_one_instance_stay_together_in_spool_order(tmp_path: Path) -> None:
    files = [_write(tmp_path / "1.dcm", "1.2.3"), _write(tmp_path / "2.dcm", "1.2.4"),
             _write(tmp_path / "3.dcm", "1.2.3"), tmp_path / "gone.dcm"]
    batch = [Outgoing(n, path, "s", 0) for n, path in enumerate(files, start=1)]
    groups = [[item.id for item in group] for group in _by_instance(batch)]
    assert groups == [[1, 3], [2], [4]]  # the correction (3) after the first copy (1); the missing file alone
