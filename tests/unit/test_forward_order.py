"""Parallel forwarding keeps the order that matters: copies of one SOP instance."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import Outgoing
from gateway.worker import _by_instance


def test_copies_of_one_instance_stay_together_in_spool_order(tmp_path: Path) -> None:
    tokens = ["1.2.3", "1.2.4", "1.2.3", "", ""]
    batch = [Outgoing(n, tmp_path / f"{n}.dcm", "s", 0, token) for n, token in enumerate(tokens, start=1)]
    groups = [[item.id for item in group] for group in _by_instance(batch)]
    assert groups == [[1, 3], [2], [4], [5]]  # the correction (3) after the first copy (1); no token: alone
