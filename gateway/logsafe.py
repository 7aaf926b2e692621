"""Logging that never carries identity, whatever the libraries underneath say.

pydicom reports damaged values by quoting them ("Invalid value for VR UI: '...'"), through
its logger and through Python warnings; in a modality's broken object such a value can be a
patient's name or accession number (the integration tests' log check caught exactly that in
a fuzzed object). pynetdicom does the same ("Non-conformant 'Affected SOP Instance UID'
value '...'" quotes the original UID). The gateway keeps the libraries' diagnosis and
withholds the quoted part, for every library logger: pydicom, pynetdicom, apscheduler, urllib3.
"""

from __future__ import annotations

import logging
import re
import warnings
from functools import lru_cache

from pydicom.datadict import DicomDictionary
from pynetdicom import _config as netconfig

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRARIES = ("pydicom", "pynetdicom", "apscheduler", "urllib3")
# Loggers that see sockets, never datasets: their quotes are the peer's TLS diagnosis (which
# certificate a C-MOVE destination presented), kept.
NO_DATA = ("pynetdicom.transport",)
_QUOTE = re.compile(r"""['"]""")
WITHHELD = "[value withheld]"


class WithholdValues(logging.Filter):
    """Cuts a library record's message at its first quote that does not open an attribute's
    name: what follows is the data's own text. A traceback the library attached (its
    exception's message may quote data too) is reduced to the exception's type. On the
    handlers, so the libraries' child loggers (pydicom.pixels, ...) are covered too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in LIBRARIES:
            return True
        message = record.getMessage()
        cut = message if record.name in NO_DATA else withhold(message)
        if record.exc_info and record.exc_info[0] is not None:
            cut += f" ({record.exc_info[0].__name__}, details withheld)"
            record.exc_info, record.exc_text = None, None
        if cut != message:
            record.msg, record.args = cut, ()
        return True


def withhold(message: str) -> str:
    """``message`` up to its first quoted text that is not a DICOM attribute's name."""
    start = 0
    while (quote := _QUOTE.search(message, start)) is not None:
        end = message.find(quote.group(), quote.end())
        if end == -1 or message[quote.end():end] not in _attribute_names():
            return message[:quote.start()] + WITHHELD
        start = end + 1
    return message


@lru_cache(maxsize=1)
def _attribute_names() -> frozenset[str]:
    return frozenset(name for entry in DicomDictionary.values() for name in (entry[2], entry[4]) if name)


def configure() -> None:
    """Root logging for every ``gateway`` command, with the libraries' chatter tuned down."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    for noisy in ("apscheduler", "pynetdicom"):  # one line per object and per job run otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pynetdicom formats every PDU, DIMSE message and query identifier for INFO and DEBUG
    # lines that the level above drops (its standard handlers: about a tenth of its CPU per
    # received object, issue 16); lowered, the identifiers would write the patients' names a
    # C-FIND asks for or answers into the log. Neither is done.
    netconfig.LOG_HANDLER_LEVEL = "none"
    netconfig.LOG_REQUEST_IDENTIFIERS = netconfig.LOG_RESPONSE_IDENTIFIERS = False
    # A protect job still running when its next tick comes is expected (coalesce, one at a
    # time); apscheduler warns about each skipped tick. Job failures are logged by its executor.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WithholdValues())
    # pydicom's warn_and_log also raises each message as a Python warning, printed unfiltered
    # to stderr (the service's log); the logger line above already carries it.
    warnings.filterwarnings("ignore", module=r"(pydicom|pynetdicom)(\..*)?$")
