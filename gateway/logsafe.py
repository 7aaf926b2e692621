"""Logging that never carries identity, whatever the libraries underneath say.

pydicom reports damaged values by quoting them ("Invalid value for VR UI: '...'"), through
its logger and through Python warnings; in a modality's broken object such a value can be a
patient's name or accession number (the integration tests' log check caught exactly that in
a fuzzed object). The gateway keeps pydicom's diagnosis and withholds the quoted part.
"""

from __future__ import annotations

import logging
import re
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUOTED = re.compile(r"""['"].*""", re.DOTALL)


class WithholdValues(logging.Filter):
    """Cuts a pydicom record's message at its first quote: what follows is the data's own
    text. On the handlers, so pydicom's child loggers (pixels, ...) are covered too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "pydicom" and not record.name.startswith("pydicom."):
            return True
        message = record.getMessage()
        cut = _QUOTED.sub("[value withheld]", message)
        if cut != message:
            record.msg, record.args = cut, ()
        return True


def configure() -> None:
    """Root logging for every ``gateway`` command, with the libraries' chatter tuned down."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    for noisy in ("apscheduler", "pynetdicom"):  # one line per object and per job run otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A protect job still running when its next tick comes is expected (coalesce, one at a
    # time); apscheduler warns about each skipped tick. Job failures are logged by its executor.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WithholdValues())
    # pydicom's warn_and_log also raises each message as a Python warning, printed unfiltered
    # to stderr (the service's log); the logger line above already carries it.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
