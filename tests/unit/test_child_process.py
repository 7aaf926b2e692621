"""Worker processes end with the service, even one killed with kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import multiprocessing, os, sys, time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from gateway.protect import init_process
from gateway.keyring import Keyring

if __name__ == "__main__":
    keyring = Keyring.create(Path(sys.argv[1]))
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(sys.argv[2]),
                               initializer=init_process, initargs=(keyring, 20))
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waits for its new parent to reap it
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_process_ends_when_the_service_is_killed(tmp_path, method: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "keyring.json"), method],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the worker process outlived its killed service"
    finally:
        parent.kill()
