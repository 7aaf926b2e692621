"""The DIMSE status codes the gateway answers with, named once.

pynetdicom's ``Status`` names only SUCCESS, PENDING, CANCEL and MOVE_DESTINATION_UNKNOWN;
the others are added here with ``Status.add``, so the listener and the Query/Retrieve
handlers speak one vocabulary. Where PS3.4 names one code differently per service, the
name says what both mean.
"""

from __future__ import annotations

from pynetdicom.status import Status

for _name, _code in (
    ("OUT_OF_RESOURCES", 0xA700),  # C-STORE: refused, out of resources (the sender retries)
    ("UNABLE_TO_PROCESS", 0xC000),  # C-STORE "cannot understand", Q/R "unable to process"
    ("DOES_NOT_MATCH_SOP_CLASS", 0xA900),  # the data set (C-STORE) or identifier (Q/R) does not match
    ("SOP_CLASS_NOT_SUPPORTED", 0x0122),
    ("NOT_AUTHORIZED", 0x0124),
):
    if not hasattr(Status, _name):
        Status.add(_name, _code)

__all__ = ["Status"]
