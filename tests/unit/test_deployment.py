"""The shipped deployment, checked statically point by point (no container engine runs here),
and ``check-config`` / ``serve`` on its example configuration."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testkit.localstack import REPO, free_port

DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
EXAMPLE = yaml.safe_load((REPO / "deploy" / "gateway.example.yaml").read_text())


def _instructions(name: str) -> list[str]:
    """The Dockerfile's instructions of one kind, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def _uid() -> str:
    (arg,) = [a for a in _instructions("ARG") if a.startswith("GATEWAY_UID=")]
    return arg.split("=", 1)[1]


def test_the_image_carries_tesseract_with_its_language_data() -> None:
    installs = [shlex.split(run) for run in _instructions("RUN") if "apt-get install" in run]
    packages = {word for words in installs for word in words}
    assert {"tesseract-ocr", "tesseract-ocr-eng"} <= packages
    assert any("tesseract --list-langs" in run for run in _instructions("RUN"))  # the build fails without eng


def test_the_image_runs_as_a_fixed_non_root_uid_that_owns_the_spool() -> None:
    uid = _uid()
    assert uid.isdigit() and int(uid) >= 1000
    (user,) = _instructions("USER")
    assert user.split(":")[0] in (uid, "${GATEWAY_UID}") and user.split(":")[0] != "0"
    run = " ".join(_instructions("RUN"))
    assert "--uid ${GATEWAY_UID}" in run and "mkdir -p /var/lib/gateway/spool" in run
    assert "chown -R ${GATEWAY_UID}:${GATEWAY_UID} /var/lib/gateway" in run
    # the folder is made and owned before VOLUME, so a new named volume starts owned by the uid
    assert DOCKERFILE.index("chown -R") < DOCKERFILE.index("VOLUME")
    (volume,) = _instructions("VOLUME")
    assert "/var/lib/gateway" in volume
    assert Path(EXAMPLE["spool"]["path"]).is_relative_to("/var/lib/gateway")
    assert "gateway-spool:/var/lib/gateway" in COMPOSE["services"]["gateway"]["volumes"]


def test_secrets_come_from_files_the_compose_file_declares() -> None:
    gateway = COMPOSE["services"]["gateway"]
    declared = COMPOSE["secrets"]
    mounted = {f"/run/secrets/{name}" for name in gateway["secrets"]}
    assert EXAMPLE["keyring"] in mounted and EXAMPLE["orthanc"]["password_file"] in mounted
    assert "password" not in EXAMPLE["orthanc"]
    for name in gateway["secrets"] + COMPOSE["services"]["orthanc"]["secrets"]:
        assert declared[name]["file"].startswith("./deploy/secrets/")
    assert "/deploy/secrets/" in (REPO / ".gitignore").read_text()  # never committed
    assert "keys init" in (REPO / "deploy" / "make-secrets").read_text()
    # Orthanc's filter reads the authenticity keys from the secret its configuration names
    assert "orthanc_authenticity_keys" in COMPOSE["services"]["orthanc"]["secrets"]
    orthanc_json = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    assert orthanc_json["PrivacyGateway"]["AuthenticityKeys"] == "/run/secrets/orthanc_authenticity_keys"
    assert "export-authenticity" in (REPO / "deploy" / "make-secrets").read_text()


def test_both_services_have_health_checks_and_status_is_on_the_compose_network() -> None:
    gateway, orthanc = COMPOSE["services"]["gateway"], COMPOSE["services"]["orthanc"]
    port = EXAMPLE["status_http"]["port"]
    assert EXAMPLE["status_http"]["host"] == "0.0.0.0"  # not the container's loopback
    assert EXAMPLE["status_http"]["allow_plaintext"] is True  # said out loud: compose's private network
    assert str(port) in [str(p) for p in gateway["expose"]]
    assert f"127.0.0.1:{port}/status" in " ".join(gateway["healthcheck"]["test"])
    assert any(f"127.0.0.1:{port}/status" in h for h in _instructions("HEALTHCHECK"))
    assert orthanc["healthcheck"]["test"] and "8042" in " ".join(orthanc["healthcheck"]["test"])
    assert gateway["depends_on"]["orthanc"]["condition"] == "service_healthy"
    assert "ports" not in orthanc  # only the gateway reaches Orthanc
    assert EXAMPLE["orthanc"]["url"] == "http://orthanc:8042"


def test_no_credential_is_committed() -> None:
    orthanc = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    assert orthanc["AuthenticationEnabled"] is True and "RegisteredUsers" not in orthanc
    for service in COMPOSE["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                continue  # where a secret is mounted (POSTGRES_PASSWORD_FILE), not the secret
            assert "PASSWORD" not in key.upper() and "USERS" not in key.upper(), key
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    for name in tracked:
        if name.endswith((".json", ".yml", ".yaml", ".toml")) and not name.startswith("tests/"):
            text = (REPO / name).read_text(errors="replace")
            assert "change-me" not in text and not re.search(r"^\s*password:\s*\S", text, re.M), name


def _example_config(tmp_path: Path, orthanc_port: int) -> Path:
    """The example configuration with its container paths moved under ``tmp_path``."""
    config = yaml.safe_load((REPO / "deploy" / "gateway.example.yaml").read_text())
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    config["keyring"] = str(secrets / "gateway_keyring")
    config["orthanc"]["password_file"] = str(secrets / "orthanc_password")
    config["orthanc"]["url"] = f"http://127.0.0.1:{orthanc_port}"
    config["orthanc"]["timeout_seconds"] = 2
    config["spool"]["path"] = str(tmp_path / "spool")
    config["listener"]["port"], config["status_http"]["port"] = free_port(), free_port()
    for destination in config["retrieval"]["destinations"]:  # no site PKI here (tests/unit/test_tls_legs.py)
        for key in ("tls", "ca_certificates", "certificate_subject", "client_certificate", "client_private_key"):
            destination.pop(key, None)
        destination["allow_cleartext_originals"] = True
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "init", "--keyring", config["keyring"]],
                   check=True, capture_output=True, cwd=REPO)
    return path


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_a_missing_secret_file_stops_check_config_and_serve_with_what_to_fix(tmp_path: Path) -> None:
    config = _example_config(tmp_path, free_port())
    for command in ("check-config", "serve"):
        result = _cli(command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert "orthanc.password_file" in result.stderr and "a secret the deployment must mount" in result.stderr
        assert "Traceback" not in result.stderr


def test_check_config_warns_when_orthanc_is_unreachable(tmp_path: Path) -> None:
    config = _example_config(tmp_path, free_port())  # nothing listens there
    (tmp_path / "run-secrets" / "orthanc_password").write_text("from-a-secret\n")
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "warning: Orthanc at" in result.stdout and "not reachable" in result.stdout
    assert "from-a-secret" not in result.stdout + result.stderr


def test_check_config_names_a_spool_the_user_cannot_write(tmp_path: Path) -> None:
    config = _example_config(tmp_path, free_port())
    (tmp_path / "run-secrets" / "orthanc_password").write_text("x\n")
    (tmp_path / "not-a-folder").write_text("")  # (root writes every folder; a file stands in for one it cannot)
    text = config.read_text().replace(str(tmp_path / "spool"), str(tmp_path / "not-a-folder" / "spool"))
    config.write_text(text)
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 2 and "spool.path" in result.stderr and "Traceback" not in result.stderr


# -- profile "cluster": PostgreSQL, two Orthanc on its index, three gateway nodes, HAProxy ------

CLUSTER_EXAMPLE = yaml.safe_load((REPO / "deploy" / "gateway.cluster.example.yaml").read_text())
NODES = ("gateway-1", "gateway-2", "gateway-3")
CLUSTER = ("postgres", "orthanc-a", "orthanc-b", "gateway-migrate", *NODES, "haproxy")


def test_the_cluster_profile_adds_its_services_and_leaves_the_single_site_as_it_was() -> None:
    services = COMPOSE["services"]
    for name in CLUSTER:
        assert services[name]["profiles"] == ["cluster"], name
    for name in ("gateway", "orthanc"):
        assert "profiles" not in services[name]  # `docker compose up -d` starts what it did
    for name in set(CLUSTER) - {"gateway-migrate"}:  # long-running: each has a health check
        assert services[name]["healthcheck"]["test"], name
    published = {name for name in CLUSTER if "ports" in services[name]}
    assert published == {"haproxy"} and services["haproxy"]["ports"] == ["11112:11112"]


def test_the_gateway_nodes_share_spool_state_and_keys_and_each_has_its_own_id() -> None:
    services = COMPOSE["services"]
    nodes = [services[name] for name in NODES]
    assert [n["hostname"] for n in nodes] == list(NODES)  # state.node defaults to the host name
    assert "node" not in CLUSTER_EXAMPLE["state"]
    for node in nodes:
        assert "cluster-spool:/var/lib/gateway" in node["volumes"]
        assert "./deploy/gateway-cluster.yaml:/etc/gateway/gateway.yaml:ro" in node["volumes"]
        assert {"gateway_keyring", "orthanc_password", "postgres_pgpass"} <= set(node["secrets"])
        assert node["environment"]["PGPASSFILE"] == "/run/secrets/postgres_pgpass"
        assert node["depends_on"]["gateway-migrate"]["condition"] == "service_completed_successfully"
        assert {"orthanc-a", "orthanc-b"} <= set(node["depends_on"])
        assert f"127.0.0.1:{CLUSTER_EXAMPLE['status_http']['port']}/status" in " ".join(node["healthcheck"]["test"])
    migrate = services["gateway-migrate"]
    assert migrate["command"][:2] == ["db", "upgrade"] and migrate["depends_on"]["postgres"]["condition"] == \
        "service_healthy"
    url = CLUSTER_EXAMPLE["state"]["url"]
    assert url.startswith("postgresql+psycopg://gateway@postgres:5432/") and ":" not in url.split("//")[1].split("@")[0]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "gateway"
    assert url.rsplit("/", 1)[1] == services["postgres"]["environment"]["POSTGRES_DB"]


def test_the_cluster_example_is_the_single_site_example_but_for_the_cluster_keys() -> None:
    differing = {key for key in EXAMPLE.keys() | CLUSTER_EXAMPLE.keys() if EXAMPLE.get(key) != CLUSTER_EXAMPLE.get(key)}
    assert differing == {"senders", "orthanc", "state"}
    assert {k: v for k, v in CLUSTER_EXAMPLE["orthanc"].items() if k not in ("url", "failover")} == \
        {k: v for k, v in EXAMPLE["orthanc"].items() if k != "url"}
    assert [CLUSTER_EXAMPLE["orthanc"]["url"], *CLUSTER_EXAMPLE["orthanc"]["failover"]] == \
        ["http://orthanc-a:8042", "http://orthanc-b:8042"]
    # behind the proxy every association comes from its address: no sender is checked by host
    assert all("host" not in s and "storage_commitment_port" not in s for s in CLUSTER_EXAMPLE["senders"])
    assert [s["ae_title"] for s in CLUSTER_EXAMPLE["senders"]] == [s["ae_title"] for s in EXAMPLE["senders"]]


def test_the_orthanc_servers_share_one_postgresql_index_and_one_storage_volume() -> None:
    services = COMPOSE["services"]
    plugin = json.loads((REPO / "orthanc" / "postgresql.json").read_text())["PostgreSQL"]
    # several writers on one database (orthanc-postgresql 4.0: Lock false), files not in the database
    assert plugin["EnableIndex"] is True and plugin["EnableStorage"] is False and plugin["Lock"] is False
    assert plugin["Host"] == "postgres" and "Password" not in plugin  # the password comes from PGPASSFILE
    assert plugin["Username"] == services["postgres"]["environment"]["POSTGRES_USER"]
    init = (REPO / "deploy" / "postgres-init.sql").read_text()
    assert f"CREATE DATABASE {plugin['Database']}" in init
    assert any(v.endswith("/docker-entrypoint-initdb.d/10-orthanc.sql:ro") for v in services["postgres"]["volumes"])
    for name in ("orthanc-a", "orthanc-b"):
        orthanc = services[name]
        assert "./orthanc/postgresql.json:/etc/orthanc/postgresql.json:ro" in orthanc["volumes"]
        assert "orthanc-cluster-storage:/var/lib/orthanc/db" in orthanc["volumes"]
        assert orthanc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert {"orthanc_authenticity_keys", "postgres_pgpass"} <= set(orthanc["secrets"])
        assert "ports" not in orthanc
    for name in ("postgres_password", "postgres_pgpass"):
        assert COMPOSE["secrets"][name]["file"].startswith("./deploy/secrets/")
    assert "postgres-pgpass" in (REPO / "deploy" / "make-secrets").read_text()


def test_haproxy_passes_dicom_in_tcp_mode_to_every_node_checked_on_its_status_port() -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    cfg = REPO / "deploy" / "haproxy.cfg"
    checked = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert checked.returncode == 0 and "Configuration file is valid" in checked.stdout + checked.stderr
    # the only warnings: the node names resolve on the compose network, not here
    warnings = [line for line in checked.stderr.splitlines() if "WARNING" in line]
    assert all("could not resolve address" in line for line in warnings), warnings
    text = cfg.read_text()
    assert re.search(r"^\s*mode tcp$", text, re.M) and re.search(r"^\s*bind :11112$", text, re.M)
    servers = re.findall(r"^\s*server (\S+) (\S+)$", text, re.M)
    assert servers == [(name, f"{name}:{CLUSTER_EXAMPLE['listener']['port']}") for name in NODES]
    assert f"check port {CLUSTER_EXAMPLE['status_http']['port']}" in text and "uri /status" in text
    mounted = COMPOSE["services"]["haproxy"]["volumes"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in mounted
    assert "monitor-uri /healthz" in text
    assert "/healthz" in " ".join(COMPOSE["services"]["haproxy"]["healthcheck"]["test"])
