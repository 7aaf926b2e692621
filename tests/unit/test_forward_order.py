"""Parallel forwarding keeps the order that matters (copies of one SOP instance) and writes
a batch's index entries in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import envelope
from gateway.index import Entry, Index, Sealing
from gateway.keyring import Keyring
from gateway.spool import Outgoing
from gateway.worker import _by_instance


def test_copies_of_one_instance_stay_together_in_spool_order(tmp_path: Path) -> None:
    tokens = ["1.2.3", "1.2.4", "1.2.3", "", ""]
    batch = [Outgoing(n, tmp_path / f"{n}.dcm", "s", 0, token) for n, token in enumerate(tokens, start=1)]
    groups = [[item.id for item in group] for group in _by_instance(batch)]
    assert groups == [[1, 3], [2], [4], [5]]  # the correction (3) after the first copy (1); no token: alone


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
