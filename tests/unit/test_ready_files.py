"""Files for incoming objects are created before the objects arrive (``gateway/ready_files.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import dimse_messages

from gateway import ready_files
from gateway.ready_files import ReadyFiles


def test_received_objects_go_to_files_made_ahead_and_a_stop_removes_the_rest(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    monkeypatch.setattr(ready_files, "READY", 3)
    files = ReadyFiles(tmp_path)
    files.install()
    deadline = time.time() + 10
    while len(list(tmp_path.iterdir())) < 3 and time.time() < deadline:
        time.sleep(0.01)
    made = set(tmp_path.iterdir())
    assert len(made) == 3
    taken = [dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm") for _ in range(5)]
    assert {Path(f.name) for f in taken[:3]} == made  # the ready ones first, then made on the spot
    for n, f in enumerate(taken):
        f.write(b"object %d" % n)
        f.file.flush()
        f.close()
        assert Path(f.name).read_bytes() == b"object %d" % n and Path(f.name).parent == tmp_path
    other = dimse_messages.NamedTemporaryFile(mode="w+b")  # not pynetdicom's request: left as it is
    assert Path(other.name).parent != tmp_path
    other.close()
    files.stop()
    assert {p.name for p in tmp_path.iterdir()} == {Path(f.name).name for f in taken}
