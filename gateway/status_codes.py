"""The DIMSE status codes the gateway answers with, named once (``from gateway import
status_codes as dimse``; ``dimse.OUT_OF_RESOURCES``).

pynetdicom's ``Status`` names only SUCCESS, PENDING, CANCEL and MOVE_DESTINATION_UNKNOWN;
the others are added to it here with ``Status.add`` too, so pynetdicom-side code and logs
use the same names. Where PS3.4 names one code differently per service, the name here
says what both mean. (Module constants rather than ``Status.X`` in the gateway's code:
a type checker cannot see attributes ``Status.add`` sets at run time.)
"""

from __future__ import annotations

from pynetdicom.status import Status

SUCCESS = int(Status.SUCCESS)
PENDING = int(Status.PENDING)
CANCEL = int(Status.CANCEL)
MOVE_DESTINATION_UNKNOWN = int(Status.MOVE_DESTINATION_UNKNOWN)
OUT_OF_RESOURCES = 0xA700  # C-STORE: refused, out of resources (the sender retries)
UNABLE_TO_PROCESS = 0xC000  # C-STORE "cannot understand", Q/R "unable to process"
DOES_NOT_MATCH_SOP_CLASS = 0xA900  # the data set (C-STORE) or identifier (Q/R) does not match
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
# N-ACTION answers and Storage Commitment failure reasons (PS3.7 C.4, PS3.4 J.3.3).
NO_SUCH_ACTION = 0x0123
MISSING_ATTRIBUTE = 0x0120
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

for _name in ("OUT_OF_RESOURCES", "UNABLE_TO_PROCESS", "DOES_NOT_MATCH_SOP_CLASS", "SOP_CLASS_NOT_SUPPORTED",
              "NOT_AUTHORIZED", "NO_SUCH_ACTION", "MISSING_ATTRIBUTE", "PROCESSING_FAILURE", "NO_SUCH_INSTANCE",
              "CLASS_INSTANCE_CONFLICT"):
    if not hasattr(Status, _name):
        Status.add(_name, globals()[_name])
