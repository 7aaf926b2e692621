"""What each worker process of the gateway does first: end when the service ends.

A ``ProcessPoolExecutor``'s workers wait on a queue whose both ends they hold, so a service
killed with kill -9 (or by the kernel's out-of-memory killer) would leave them waiting for
ever, each with its models and the keyring in memory, and a restarted service would start
a second set beside them (a forkserver's children even keep the fork server alive). A daemon
thread waits on multiprocessing's parent sentinel (a pipe the parent holds open) and ends
the process once the parent is gone. ``PR_SET_PDEATHSIG`` would not do: it fires when the
thread that started the process ends, and pools start processes from short-lived threads.
"""

from __future__ import annotations

import multiprocessing
import os
import threading


def exit_with_parent() -> None:
    """Watch the process that started this one from a daemon thread; exit at once when it
    is gone. Nothing to watch in a process nobody started (the service itself)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
