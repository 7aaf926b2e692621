"""`gateway quarantine list|show|release|reroute|delete` against a running gateway and Orthanc."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from testkit import synthetic
from testkit.localstack import REPO, GatewayProcess, OrthancServer, run_cli, storescu
from tests.conftest import write_study
from tests.integration.conftest import HANDLED_IDENTITY, wait_for

MR_ONLY = [{"name": "mr", "match": {"modality": ["MR"]}, "plugin": "none"}]


def _quarantine(gateway: GatewayProcess, *args: str) -> str:
    return run_cli("quarantine", args[0], "--config", str(gateway.config_path), *args[1:]).stdout


def _listed(gateway: GatewayProcess) -> list[str]:
    return re.findall(r"\s(2\.25\.\d+)\s", _quarantine(gateway, "list"))


def test_an_administrator_inspects_reroutes_deletes_and_releases(tmp_path: Path, orthanc: OrthancServer) -> None:
    # No route takes CT: both series of the study are quarantined.
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, routes=MR_ONLY, settle_seconds=0.5).start()
    try:
        write_study(tmp_path / "study", (2, 1), size=64)
        storescu(gateway.port, tmp_path / "study")
        wait_for(lambda: len(_listed(gateway)) == 2)
        listing = _quarantine(gateway, "list")
        assert "2 series set aside" in listing and "no route matches this series" in listing
        shows = {token: _quarantine(gateway, "show", token) for token in _listed(gateway)}
        (two,) = [t for t, text in shows.items() if "objects     2" in text]
        (one,) = [t for t in shows if t != two]
        shown = shows[two]
        assert "no route matches this series" in shown and "from MODALITY" in shown and "CT Image Storage" in shown
        assert shown.count(" from MODALITY ") == 2  # its objects, by pseudonym
        for text in (listing, shown):
            assert not any(value in text.upper() for value in HANDLED_IDENTITY)

        # re-route one series through a route that takes it, with the gate on
        out = _quarantine(gateway, "reroute", two, "--route", "mr", "--by", "alice")
        assert "released 2 object(s)" in out
        wait_for(lambda: len(orthanc.get("instances")) == 2)
        # delete the other: its originals are gone
        assert "deleted the originals of 1 object(s)" in _quarantine(gateway, "delete", one, "--by", "bob")
        assert not list((gateway.folder / "spool" / "quarantine").rglob("*.dcm"))
        assert _listed(gateway) == []
        audit = [json.loads(line) for line in (gateway.folder / "spool" / "audit.jsonl").read_text().splitlines()]
        assert {(a["ae_title"], a["action"], a["series"]) for a in audit if a["action"].startswith("quarantine_")} == {
            ("alice", "quarantine_reroute", two), ("bob", "quarantine_delete", one)}
        # the worker audited putting both series aside in the first place
        assert {a["series"] for a in audit if a["action"] == "quarantine" and a["ae_title"] == "gateway"} >= {one, two}
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.status_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'gateway_quarantine_actions_total{action="reroute"} 1.0' in metrics
        assert 'gateway_quarantine_actions_total{action="delete"} 1.0' in metrics

        # release after the cause is fixed: a new CT series is quarantined, the admin adds a
        # CT route, restarts, releases; the series goes to Orthanc
        write_study(tmp_path / "second", (2,), size=64, identity=synthetic.Identity(accession="ACC20240519"))
        storescu(gateway.port, tmp_path / "second")
        wait_for(lambda: len(_listed(gateway)) == 1)
        (third,) = _listed(gateway)
        gateway.stop()
        gateway.routes = [{"name": "ct", "match": {"modality": ["CT"]}, "plugin": "none"}, *MR_ONLY]
        gateway.start()
        assert "released 2 object(s)" in _quarantine(gateway, "release", third)
        wait_for(lambda: len(orthanc.get("instances")) == 4)
        assert _listed(gateway) == [] and "quarantined  0" in gateway.status()
    finally:
        gateway.stop()


def test_unknown_series_and_routes_get_a_clear_message(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc).start()
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "gateway.cli", "quarantine", *args, "--config",
                                   str(gateway.config_path)], capture_output=True, text=True, cwd=REPO)

        missing = cli("release", "2.25.1")
        assert missing.returncode == 2 and "no set-aside series 2.25.1" in missing.stderr
        no_route = cli("reroute", "2.25.1", "--route", "nowhere")
        assert no_route.returncode == 2 and "no route named 'nowhere'" in no_route.stderr
        assert "Traceback" not in missing.stderr + no_route.stderr
    finally:
        gateway.stop()
