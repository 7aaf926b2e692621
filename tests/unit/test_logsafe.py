"""No identity reaches the log through the libraries' own diagnostics."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import synthetic
from gateway.keyring import Keyring
from gateway.logsafe import WithholdValues
from tests.conftest import encode


def test_a_quoted_value_is_withheld_and_the_diagnosis_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(WithholdValues())
    with caplog.at_level(logging.WARNING):
        logging.getLogger("pydicom.pixels.utils").warning("Invalid value for VR UI: '%s'. Please see", "DOE^JANE^Q")
        logging.getLogger("pydicom").warning("Expected explicit VR, found implicit")
        logging.getLogger("gateway.listener").warning("refused %r", "CT_ROOM3")  # ours: quotes are ours
    assert caplog.messages == ["Invalid value for VR UI: [value withheld]", "Expected explicit VR, found implicit",
                               "refused 'CT_ROOM3'"]


def test_a_damaged_value_holding_a_name_never_reaches_the_commands_output(tmp_path: Path) -> None:
    ds = synthetic.ct_series(1, size=16)[0]
    raw = encode(ds)
    uid = str(ds.FrameOfReferenceUID).encode()
    damaged = raw.replace(uid, b"DOE^JANE^Q".ljust(len(uid), b"X"))  # a UI holding a name: pydicom quotes it
    assert damaged != raw
    (tmp_path / "in.dcm").write_bytes(damaged)
    Keyring.create(tmp_path / "k.json")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "protect", str(tmp_path / "in.dcm"),
                             str(tmp_path / "out"), "--keyring", str(tmp_path / "k.json")],
                            capture_output=True, text=True, timeout=120)
    assert "DOE" not in result.stdout + result.stderr
    assert "withheld" in result.stderr  # pydicom did complain, without the value
