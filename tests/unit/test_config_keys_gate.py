"""Config validation messages, keyring checks, the PHI gate and the spool's intake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway import gate
from gateway.config import ConfigError, load_config
from gateway.keyring import Keyring, KeyringError
from gateway.spool import Spool, SpoolError

GOOD = """
senders: [{ae_title: CT1, host: 127.0.0.1}]
orthanc: {url: "http://127.0.0.1:8042", username: gw, password: pw}
keyring: keys.json
spool: {path: spool}
profiles: {default: {options: [retain_longitudinal_modified_dates]}}
routes: [{name: all, plugin: none}]
"""


def _write(tmp_path: Path, text: str, name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_config_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert config.keyring == tmp_path / "keys.json" and config.spool.path == tmp_path / "spool"
    assert config.route_for("CT1", "CT", "1.2").name == "all"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("ae_title: CT1", "ae_title: THIS-TITLE-IS-TOO-LONG"), "senders.0.ae_title"),
        (("options: [retain_longitudinal_modified_dates]", "options: [keep_names]"), "profiles.default.options"),
        (("username: gw", "usrname: gw"), "orthanc.usrname"),
        (("routes: [{name: all, plugin: none}]", "routes: [{name: all, profile: strict}]"), "routes[0].profile"),
        (("password: pw", "password: pw, password_file: /x"), "orthanc"),
    ],
)
def test_a_bad_config_names_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, GOOD.replace(*change)))
    assert message in str(info.value)


def test_toml_works_and_broken_syntax_is_reported(tmp_path: Path) -> None:
    toml = _write(tmp_path, """
keyring = "k.json"
senders = [{ae_title = "CT1"}]
routes = [{name = "all"}]
[orthanc]
url = "http://127.0.0.1:8042"
username = "gw"
password = "pw"
[spool]
path = "spool"
""", "gw.toml")
    assert load_config(toml).senders[0].ae_title == "CT1"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "senders: [unclosed"))


def test_keyring_mode_is_checked(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k.json")
    assert (os.stat(ring.path).st_mode & 0o777) == 0o600
    os.chmod(ring.path, 0o640)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(ring.path)
    with pytest.raises(KeyringError, match="exists already"):
        Keyring.create(ring.path)


def test_the_gate_finds_identity_in_sequences_private_data_and_raw_bytes() -> None:
    needles = gate.Needles({"PID-4711-0815", "Saint Example General Hospital"}, {"DOE^JANE"})
    clean = Dataset()
    clean.BodyPartExamined = "DOE"  # a coded value: a name part alone does not count there
    clean.StudyDescription = "Chest"
    assert gate.scan(clean, b"", needles) == []

    nested = Dataset()
    item = Dataset()
    item.TextValue = "seen by dr x for doe, jane"
    nested.ContentSequence = Sequence([item])
    assert gate.scan(nested, b"", needles)[0].where.startswith("(0040,A730)[0]")

    private = Dataset()
    private.add_new(0x00291010, "UN", b"MRN PID-4711-0815\x00")
    assert gate.scan(private, b"", needles)
    assert gate.scan(Dataset(), b"\x00\x01PID-4711-0815\x00", needles)[0].kind.startswith("raw")
    assert gate.scan(Dataset(), b"XPID-4711-08150", needles) == []  # inside a longer token


def test_the_raw_search_finds_every_value_in_one_pass() -> None:
    """One automaton for all values: a value inside a longer token is skipped and a later
    whole-word occurrence of it still found, overlapping values are each found, and a
    value only in the Latin-1 bytes of another encoding is found in those bytes."""
    needles = gate.Needles({"PID-4711-0815", "4711-0815-99", "MÜLLERSTRASSE 5"}, set(),
                           charsets={("ISO_IR 100",)})
    kinds = [h.kind for h in gate.scan(Dataset(), b"XPID-4711-08150 .. PID-4711-0815-99\x00", needles)]
    assert kinds == ["raw identifier", "raw identifier"]  # both, from one overlapping run
    assert gate.scan(Dataset(), b"\x00M\xdcLLERSTRASSE 5\x00", needles)[0].kind == "raw identifier"
    assert gate.scan(Dataset(), b"AMPID-4711-0815Z 4711-0815-990", needles) == []


def test_spool_intake_is_durable_and_failures_are_errors(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    row = spool.accept(b"DICM-bytes", "CT1", "2.25.1", "2.25.2", "CT", "1.2")
    assert spool.counts() == {"received": 1}
    assert (tmp_path / "spool/incoming").iterdir().__next__().read_bytes() == b"DICM-bytes"
    assert [i.id for i in spool.received("2.25.1")] == [row]
    spool.close()
    reopened = Spool(tmp_path / "spool")  # as after a kill -9: the row is there
    assert reopened.counts() == {"received": 1}
    for f in (tmp_path / "spool/incoming").iterdir():
        f.unlink()
    (tmp_path / "spool/incoming").rmdir()
    (tmp_path / "spool/incoming").write_text("not a folder")  # the disk refuses every write
    with pytest.raises(SpoolError, match="spool file write failed"):
        reopened.accept(b"x", "CT1", "2.25.1", "2.25.3", "CT", "1.2")
    assert reopened.counts() == {"received": 1}


def test_the_shipped_example_configuration_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "deploy" / "gateway.example.yaml")
    assert config.retrieval.policy("READING_1", "10.1.5.20") == "restore"
    assert config.retrieval.policy("READING_1", "10.9.9.9") is None  # from another address: unknown
    # the example is the compose deployment's: status on the compose network (issue 14), not published
    assert config.listener.non_image == "refuse" and config.status_http.host == "0.0.0.0"


def test_tls_settings_are_checked_and_paths_resolved(tmp_path: Path) -> None:
    tls = "listener: {tls: {certificate: c.pem, private_key: k.pem, require_client_certificate: true}}\n"
    with pytest.raises(ConfigError, match="listener.tls: .*ca_certificates"):
        load_config(_write(tmp_path, GOOD + tls))
    tls = "listener: {tls: {certificate: c.pem, private_key: k.pem, ca_certificates: ca.pem}}\n"
    config = load_config(_write(tmp_path, GOOD + tls))
    assert config.listener.tls is not None and config.listener.tls.certificate == tmp_path / "c.pem"


def test_check_config_refuses_settings_a_plugin_does_not_take(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gateway.cli import main

    Keyring.create(tmp_path / "keys.json")
    bad = GOOD.replace("routes: [{name: all, plugin: none}]",
                       "routes: [{name: all, plugin: noise_key, plugin_settings: {strenght: 0.5}}]")
    assert main(["check-config", "--config", str(_write(tmp_path, bad))]) == 2
    assert "routes[0] (all): plugin_settings" in capsys.readouterr().err
    good = bad.replace("strenght", "strength")
    assert main(["check-config", "--config", str(_write(tmp_path, good))]) == 0


def test_check_config_names_what_each_route_quarantines(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gateway.cli import main

    Keyring.create(tmp_path / "keys.json")
    routes = ("routes: [{name: dose, match: {modality: [RTDOSE, CT, ES]}, plugin: ae_aes},"
              " {name: noisy, plugin: noise_key}, {name: all, plugin: none}]")
    config = GOOD.replace("routes: [{name: all, plugin: none}]", routes)
    assert main(["check-config", "--config", str(_write(tmp_path, config))]) == 0
    out = capsys.readouterr().out
    assert "routes[0] (dose): ae_aes quarantines 32-bit pixel data; 1-bit pixel data; float pixel data" in out
    assert "RTDOSE may be 32-bit pixel data" in out and "CT may" not in out
    assert "ES may be compressed pixel data no installed decoder reads" in out  # endoscopy video
    assert "here: HEVC/H.265, JPEG 2000 Part 2" in out  # no decoder installed for these
    assert "routes[1] (noisy): noise_key quarantines float pixel data" in out
    assert "routes[2]" not in out  # `none` leaves pixels alone: it refuses nothing


def test_a_route_may_ask_for_a_lossless_protected_copy(tmp_path: Path) -> None:
    lossless = GOOD.replace("routes: [{name: all, plugin: none}]",
                            "routes: [{name: all, plugin: none, protected_syntax: lossless}]")
    assert load_config(_write(tmp_path, lossless)).routes[0].protected_syntax == "lossless"
    with pytest.raises(ConfigError, match="routes.0.protected_syntax"):
        load_config(_write(tmp_path, lossless.replace("protected_syntax: lossless", "protected_syntax: jpeg")))
