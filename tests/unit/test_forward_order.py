"""Forwarding writes a batch's index entries in one transaction, in order (the spool hands
out one copy of a SOP instance at a time: tests/unit/test_state.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import envelope
from gateway.index import Entry, Index, Sealing
from gateway.keyring import Keyring


def test_a_batch_of_index_entries_is_one_transaction_in_order(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "keyring.json")
    key = envelope.new_data_key()
    sealing = Sealing(*envelope.wrap(ring, key), key)
    index = Index(tmp_path / "index.sqlite3")

    def entry(sop: str, orthanc_id: str, digest: str) -> Entry:
        return Entry("1.9", "1.9.1", sop, "P", orthanc_id, "1.2.840.10008.5.1.4.1.1.2", "", ("none",),
                     {"PatientName": "DOE^JANE"}, digest)

    index.put_many([(entry("1.9.1.1", "a", "d1"), sealing), (entry("1.9.1.2", "b", "d2"), sealing),
                    (entry("1.9.1.1", "c", "d3"), sealing)])  # a correction later in the batch wins
    first = index.get("1.9.1.1", ring)
    assert first is not None and (first.orthanc_id, first.digest) == ("c", "d3")
    assert index.count() == 2
    with pytest.raises(Exception):  # noqa: B017 - a failing row takes the whole batch back
        index.put_many([(entry("1.9.1.3", "e", "d5"), sealing), (entry("1.9.1.4", "f", "d6"), Sealing("k", b"", b""))])
    assert index.count() == 2 and index.get("1.9.1.3", ring) is None
