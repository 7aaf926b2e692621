"""No identity reaches the log through the libraries' own diagnostics."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway import logsafe
from gateway.keyring import Keyring
from gateway.logsafe import WithholdValues
from testkit import synthetic
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


def test_every_library_logger_is_filtered_and_attribute_names_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom.utils import set_uid

    caplog.handler.addFilter(WithholdValues())
    original_uid = "1.2.826.0.1.3680043.8.498.0123"  # a leading zero: valid enough, not conformant
    with caplog.at_level(logging.WARNING):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns too; its logger line is filtered
            set_uid(original_uid, "Affected SOP Instance UID", False, False, True)  # pynetdicom's own warning
        for name in ("apscheduler.executors.default", "urllib3.connectionpool"):
            logging.getLogger(name).warning("Job \"protect(DOE^JANE)\" failed: 'O'Brien'")
        try:
            raise ValueError("Invalid value 'DOE^JANE'")
        except ValueError:
            logging.getLogger("pynetdicom.dul").exception("decode failed")
    said = [(r.name.split(".")[0], r.getMessage()) for r in caplog.records]
    assert ("pynetdicom", "Non-conformant 'Affected SOP Instance UID' value [value withheld]") in said
    assert ("apscheduler", "Job [value withheld]") in said and ("urllib3", "Job [value withheld]") in said
    assert ("pynetdicom", "decode failed (ValueError, details withheld)") in said
    assert original_uid not in caplog.text and "DOE" not in caplog.text and "Brien" not in caplog.text


def test_the_transport_s_tls_diagnosis_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(WithholdValues())
    with caplog.at_level(logging.ERROR):
        logging.getLogger("pynetdicom.transport").error(
            "TCP Initialisation Error: the destination's certificate names 'ct-scanner', not 'reading-room'")
    assert caplog.messages == ["TCP Initialisation Error: the destination's certificate names 'ct-scanner', "
                               "not 'reading-room'"]


def test_pynetdicom_logs_no_query_keys_even_at_debug(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A C-FIND over a real association, both sides in this process, pynetdicom at DEBUG:
    the association is logged, the patient's name it asked for and was answered is not."""
    from pynetdicom import AE, evt
    from pynetdicom import _config as netconfig
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    for name in ("LOG_HANDLER_LEVEL", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS"):
        monkeypatch.setattr(netconfig, name, getattr(netconfig, name))  # restored afterwards
    logsafe.configure()
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientName, query.StudyInstanceUID = "STUDY", "DOE^JANE", ""

    def answer(event: Any) -> Any:
        yield 0xFF00, event.identifier

    scp = AE("SCP")
    scp.add_supported_context(FIND)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, answer)])
    scu = AE("SCU")
    scu.add_requested_context(FIND)
    try:
        with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
            assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
            assert assoc.is_established
            answers = [ds for _, ds in assoc.send_c_find(query, FIND) if ds is not None]
            assoc.release()
    finally:
        server.shutdown()
    assert [str(ds.PatientName) for ds in answers] == ["DOE^JANE"]
    assert "Association" in caplog.text  # pynetdicom did log, at DEBUG
    assert "DOE" not in caplog.text
