"""The guard against pynetdicom's reactor dropping a C-STORE response of a C-MOVE."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from gateway.netutil import keep_responses


def _association() -> Association:
    assoc = Association(AE(), "requestor")
    keep_responses(SimpleNamespace(assoc=assoc))  # type: ignore[arg-type]
    return assoc


def test_a_response_taken_by_the_reactor_goes_back_to_the_waiting_sender() -> None:
    assoc = _association()
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = generate_uid()
    rsp.Status = 0x0000
    assoc._serve_request(rsp, 3)
    assert assoc.dimse.get_msg(block=False) == (3, rsp)


def test_a_request_is_still_served(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    served = []
    assoc = Association(AE(), "requestor")
    monkeypatch.setattr(assoc, "_serve_request", lambda msg, cid: served.append((cid, msg)))
    keep_responses(SimpleNamespace(assoc=assoc))  # type: ignore[arg-type]
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = generate_uid()
    req.Priority = 2
    req.DataSet = BytesIO(b"\x00")
    assoc._serve_request(req, 5)
    assert served == [(5, req)]
    assert assoc.dimse.get_msg(block=False) == (None, None)
