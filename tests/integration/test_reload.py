"""Reload without restart: `gateway reload` and SIGHUP re-read the configuration while an
association is open; a bad or restart-only change is refused and the old one keeps running."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from testkit.localstack import REPO, GatewayProcess, OrthancServer, run_cli, storescu
from tests.conftest import write_study
from tests.integration.conftest import wait_for


def _echo(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0


def test_reload_adds_a_sender_without_dropping_an_open_association(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=60).start()
    try:
        files = write_study(tmp_path / "study", (3,), size=32)
        modality = AE(ae_title="MODALITY")
        modality.add_requested_context(CTImageStorage)
        assoc = modality.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0
        assert not _echo(gateway.port, "NEWCT")

        gateway.senders.append({"ae_title": "NEWCT"})
        gateway.write_config()
        assert "reload signalled" in run_cli("reload", "--config", str(gateway.config_path)).stdout
        wait_for(lambda: "configuration reloaded" in gateway.log_path.read_text(), timeout=10)
        assert _echo(gateway.port, "NEWCT")
        assert "Success" in storescu(gateway.port, files[1], calling="NEWCT").stderr

        assert assoc.is_established  # the association opened before the reload goes on
        assert assoc.send_c_store(pydicom.dcmread(files[2])).Status == 0
        assoc.release()
        assert assoc.is_released

        # A bad file: `gateway reload` refuses it with check-config's message, and so does the
        # running gateway on a plain SIGHUP; NEWCT (the running configuration) still works.
        gateway.senders.append({"ae_title": "A_TITLE_TOO_LONG_X"})
        gateway.write_config()
        refused = subprocess.run([sys.executable, "-m", "gateway.cli", "reload", "--config", str(gateway.config_path)],
                                 check=False, capture_output=True, text=True, cwd=REPO)
        assert refused.returncode == 2
        assert "senders.2.ae_title: an AE title is 1 to 16 ASCII characters" in refused.stderr
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "senders.2.ae_title: an AE title is 1 to 16" in gateway.log_path.read_text(), timeout=10)
        assert "configuration not reloaded, the previous one keeps running" in gateway.log_path.read_text()
        assert _echo(gateway.port, "NEWCT")

        # What the process is built around is refused too, naming the key.
        gateway.senders.pop()
        gateway.settle_seconds = 61  # allowed
        gateway.status_port += 1  # restart only
        gateway.write_config()
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused: status_http changed" in gateway.log_path.read_text(), timeout=10)
        assert gateway.process.poll() is None
        assert gateway.status().count("\n") > 3  # still serving, spool readable
    finally:
        gateway.stop()
    counts = "\n".join(line for line in gateway.status().splitlines() if "received" in line)
    assert counts.split()[-1] == "3"  # every object acknowledged is in the spool
