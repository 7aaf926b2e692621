"""The ``gateway`` command: serve, offline protect/restore, status, keys.

Errors an administrator can fix (a bad config, a missing keyring, a too-open keyring
file) end with a one-paragraph message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from gateway import frames, logsafe, preflight, quarantine
from gateway.config import Config, ConfigError, is_loopback, load_config
from gateway.deid.profile import OPTIONS
from gateway.keyring import Keyring, KeyringError
from gateway.plugin import PluginError, available, refused_kinds
from gateway.protect import Quarantine, protect_batches
from gateway.reload import check_reloadable, pid_file, signal_running
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec, route_spec
from gateway.spool import SPOOL_STATES
from gateway.stages import build_stages
from gateway.state import commands as db_commands
from gateway.state.engine import StateError, open_state
from gateway.study_keys import MemoryDataKeys

if TYPE_CHECKING:
    from gateway.service import Service

log = logging.getLogger("gateway")
# The transforms' torch threads sleep while they wait instead of spinning: on a machine whose
# cores the listener and the workers share, spinning threads doubled protect times (ae_aes:
# 2-thread protect 68-104 ms against 50 ms, measured). Read when OpenMP starts, so set here,
# before any plugin imports torch; a site's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logsafe.configure()
    try:
        return int(args.func(args) or 0)
    except (ConfigError, KeyringError, UsageError, StateError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# Commands that take only the configuration file.
_SERVICE_COMMANDS = (
    ("serve", "run the DICOM listener and the protect/forward workers"),
    ("reload", "check a configuration file, then make the running gateway use it (SIGHUP)"),
    ("check-config", "validate a configuration file and exit"),
    ("status", "queue depths, quarantine and failures (no PHI)"),
    ("audit", "print the audit log (who, from where, what, outcome)"),
    ("reindex", "rebuild the retrieval index from what Orthanc holds"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Privacy-preserving DICOM gateway in front of Orthanc.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    commands = {"serve": cmd_serve, "reload": cmd_reload, "check-config": cmd_check_config, "status": cmd_status,
                "audit": cmd_audit, "reindex": cmd_reindex}
    for name, text in _SERVICE_COMMANDS:
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", type=Path, required=True)
        s.set_defaults(func=commands[name])
    _add_offline(sub)
    _add_describe_profile(sub)
    quarantine.add_commands(sub)
    db_commands.add_commands(sub)
    _add_keys(sub)
    return p


def _add_offline(sub: Subparsers) -> None:
    for name, fn, text in (
        ("protect", cmd_protect, "protect DICOM files offline (file or folder)"),
        ("restore", cmd_restore, "restore protected DICOM files offline (file or folder)"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("input", type=Path)
        s.add_argument("output", type=Path)
        s.add_argument("--keyring", type=Path, required=True)
        if name == "protect":
            s.add_argument("--option", action="append", default=[], choices=sorted(OPTIONS),
                           help="a PS3.15 option (repeatable)")
            s.add_argument("--plugin", default="none", help="privacy transform (installed: %(default)s, ...)")
            s.add_argument("--protected-syntax", default="uncompressed", choices=["uncompressed", "lossless"],
                           help="store decoded or changed pixels as JPEG 2000 lossless where exact and smaller")
        s.set_defaults(func=fn)


def _add_keys(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="manage the keyring").add_subparsers(required=True, metavar="ACTION")
    for name, fn, text in (
        ("init", cmd_keys_init, "create a keyring (mode 0600)"),
        ("rotate", cmd_keys_rotate, "add a new active key-encryption key"),
        ("list", cmd_keys_list, "list key ids (never the keys)"),
        ("export-authenticity", cmd_keys_export_authenticity,
         "write the authenticity keys for Orthanc's filter (--out FILE, mode 0600)"),
    ):
        s = keys.add_parser(name, help=text)
        s.add_argument("--keyring", type=Path, required=True)
        if name == "rotate":
            s.add_argument("--authenticity", action="store_true",
                           help="rotate the key that tags objects for Orthanc instead of the envelope key")
            s.add_argument("--config", type=Path, help="audit the rotation in this gateway's audit log and repository")
        if name == "export-authenticity":
            s.add_argument("--out", type=Path, required=True)
            s.add_argument("--only-active", action="store_true",
                           help="retire older keys (once every gateway signs with the active one)")
        s.set_defaults(func=fn)


def _add_describe_profile(sub: Subparsers) -> None:
    s = sub.add_parser("describe-profile", help="what a route does to each attribute and option (PS3.15)")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--route", required=True, help="the route's name in the configuration")
    s.set_defaults(func=cmd_describe_profile)


def cmd_describe_profile(args: argparse.Namespace) -> int:
    from gateway.deid.describe import describe

    config = load_config(args.config)
    route = next((r for r in config.routes if r.name == args.route), None)
    if route is None:
        raise UsageError(f"no route {args.route!r} in {args.config}; routes: {[r.name for r in config.routes]}")
    spec = route_spec(config, route.name)
    print(f"Route {route.name}: profile {route.profile}, plugin {route.plugin}")
    print(describe(spec.options, spec.keep_private))
    return 0


# -- service --------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    preflight.check_files(config)
    Keyring.load(config.keyring)
    _check_plugins(config)
    _check_legs(config, serving=False)
    for line in _refusals(config):
        print(line)
    print(f"{args.config}: OK ({len(config.routes)} route(s), {len(config.senders)} sender(s))")
    for warning in (preflight.orthanc_warning(config), db_commands.state_warning(config)):
        if warning:
            print(f"warning: {warning}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.service import Service

    config = load_config(args.config)
    logging.getLogger().setLevel(config.log_level)
    preflight.check_files(config)
    _check_plugins(config)
    _check_legs(config, serving=True)
    ring = Keyring.load(config.keyring)
    if not ring.authenticity:
        raise KeyringError(f"keyring {config.keyring} has no authenticity key, so Orthanc would refuse every object: "
                           "run 'gateway keys rotate --authenticity' and 'gateway keys export-authenticity'")
    try:
        service = Service(config, ring)
    except StateError as exc:
        raise UsageError(str(exc)) from None
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    service.start()
    pid_file(config).write_text(f"{os.getpid()}\n")
    while not stop.is_set():
        if reload.wait(0.2):
            reload.clear()
            _reload(service, args.config)
    pid_file(config).unlink(missing_ok=True)
    service.stop()
    return 0


def _reload(service: Service, path: Path) -> None:
    """SIGHUP: read the file again; a bad one is refused with the messages a start would
    print, and the running configuration stays."""
    try:
        new = load_config(path)
        _check_plugins(new)
        _check_legs(new, serving=True)
        check_reloadable(service.config, new, path)
    except ConfigError as exc:
        log.error("configuration not reloaded, the previous one keeps running: %s", exc)
        return
    service.apply(new)
    log.info("configuration reloaded from %s (%d route(s), %d sender(s))", path, len(new.routes), len(new.senders))


def cmd_reload(args: argparse.Namespace) -> int:
    """Check the file as ``check-config`` does, then signal the running gateway."""
    config = load_config(args.config)
    Keyring.load(config.keyring)
    _check_plugins(config)
    _check_legs(config, serving=False)
    pid = signal_running(config)
    print(f"{args.config}: OK; reload signalled to the gateway (pid {pid}); its log says when it took effect")
    return 0


def _check_plugins(config: Config) -> None:
    """Every route's plugin is installed and takes its settings, before anything arrives:
    a misspelt setting found at the first study would quarantine it."""
    installed = available()
    for i, route in enumerate(config.routes):
        for dest in route.destinations:
            where = f"routes[{i}]" + ("" if dest.plugin is None else f".destinations ({dest.destination})")
            spec = route_spec(config, route.name, dest.destination)
            if spec.plugin not in installed:
                raise ConfigError(f"{where}.plugin: no plugin named {spec.plugin!r} is installed; "
                                  f"installed: {installed}")
            try:
                build_stages(spec)
            except (PluginError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where} ({route.name}): plugin_settings or redaction not accepted: {exc}") from None


def _check_legs(config: Config, serving: bool) -> None:
    """The TLS files of every leg load, Orthanc's certificate chains to the configured CA,
    and each leg left in clear text is named in a warning. A serving gateway whose Orthanc
    fails the check still starts: objects wait durably in the spool (status shows why)
    rather than modalities being turned away."""
    from gateway import tls

    for i, destination in enumerate(config.retrieval.destinations):
        try:
            tls.destination_tls_args(destination)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"retrieval.destinations.{i} ({destination.ae_title}): TLS files not usable: "
                              f"{exc}") from None
    if config.status_http.tls is not None:
        try:
            tls.server_context(config.status_http.tls)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"status_http.tls: certificate, key or CA not usable: {exc}") from None
    web = config.status_http
    if web.enabled and not is_loopback(web.host) and (web.tls is None or not web.tls.require_client_certificate):
        log.warning("status endpoint on %s:%d serves plain HTTP off loopback (status_http.allow_plaintext: true)",
                    web.host, web.port)
    for destination in config.retrieval.cleartext_originals():
        log.warning("C-MOVE destination %s (%s:%d) receives restored originals WITHOUT TLS "
                    "(allow_cleartext_originals: true)", destination.ae_title, destination.host, destination.port)
    for url in config.orthanc.urls:
        orthanc_host = urlsplit(url).hostname or ""
        if url.startswith("http://") and not is_loopback(orthanc_host):
            log.warning("orthanc.url is plain http to %s: the REST password and protected objects cross the network "
                        "unencrypted; use https:// unless this is a private network", orthanc_host)
    context = tls.orthanc_context(config.orthanc)  # files that cannot be used stop even a serving gateway
    if context is None:
        return
    for url in config.orthanc.urls:
        try:
            tls.check_orthanc_certificate(config.orthanc.model_copy(update={"url": url}), context)
        except ConfigError as exc:
            if not serving:
                raise
            log.error("%s; objects wait in the spool until it is fixed", exc)


def _refusals(config: Config) -> list[str]:
    """What each route's transforms quarantine whatever their settings, and where the route's
    match takes objects that may carry it (e.g. 32-bit RT Dose on an ae_aes route)."""
    lines = []
    missing = ", ".join(frames.undecodable_families())
    for i, route in enumerate(config.routes):
        named = [*(route.match.modality or []), *(route.match.sop_class_uid or [])]
        for stage in build_stages(route_spec(config, route.name)):
            kinds = refused_kinds(stage)
            if not kinds:
                continue
            what = [f"{k} (here: {missing})" if k == frames.UNDECODABLE and missing else k for k in kinds]
            line = f"routes[{i}] ({route.name}): {stage.name} quarantines {'; '.join(what)}"
            hits = [f"{n} may be {frames.MAY_CARRY[n]}" for n in named if frames.MAY_CARRY.get(n) in kinds
                    and (missing or frames.MAY_CARRY[n] != frames.UNDECODABLE)]
            if hits:
                line += f". Its match takes objects that: {'; '.join(hits)}"
            lines.append(line)
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.spool import Spool

    config = load_config(args.config)
    if not config.spool.path.exists():
        raise UsageError(f"spool {config.spool.path} does not exist yet: the gateway has not run with this config")
    db = open_state(config)
    spool = Spool(config.spool.path, intake=False, state=db)  # a running gateway may be receiving
    counts = spool.counts()
    print("objects by state:")
    for state in SPOOL_STATES:
        print(f"  {state:12} {counts.get(state, 0)}")
    deliveries = spool.delivery_counts()
    if deliveries:
        print("copies for further destinations:")
        for (name, state), n in sorted(deliveries.items()):
            print(f"  {name:16} {state:10} {n}")
    problems = spool.problem_series()
    print(f"series needing attention: {len(problems)}")
    for token, state, reason, when in problems:
        stamp = datetime.fromtimestamp(when).isoformat(timespec="seconds")
        print(f"  {stamp} {state:11} series {token}: {reason}")
    db.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit import AuditLog, audit_path

    config = load_config(args.config)
    state = open_state(config)
    for line in AuditLog(audit_path(config), state=state).lines():
        fixed = ("time", "ae_title", "address", "action", "outcome")
        what = ", ".join(f"{k}={v}" for k, v in line.items() if k not in fixed)
        print(f"{line['time']} {line['ae_title']:16} {line['address']:15} {line['action']:9} {line['outcome']:9} "
              f"{what}")
    state.close()
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from gateway.index import Index, entry_of
    from gateway.pacs_reader import PacsReader

    config = load_config(args.config)
    ring = Keyring.load(config.keyring)
    reader = PacsReader(config.orthanc)
    state = open_state(config)
    index = Index(state)
    ids = reader.all_instances()
    failed = 0
    for instance_id in tqdm(ids, unit="obj", desc="reindex"):
        try:
            index.put(*entry_of(reader.file(instance_id), instance_id, ring))
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the rebuild
            failed += 1
            log.error("object %s not indexed: %s", instance_id, type(exc).__name__)
    state.close()
    print(f"indexed {len(ids) - failed} object(s) from Orthanc, {failed} failed")
    return 1 if failed else 0


# -- offline --------------------------------------------------------------------------


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path} is neither a file nor a folder")
    return sorted(p for p in path.rglob("*") if p.is_file())


def _by_series(files: list[Path], skipped: list[Path]) -> dict[str, list[Path]]:
    """Files grouped by series; what is not a DICOM object goes to ``skipped``."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        try:
            # force: files without preamble or file meta (old archives) are DICOM too
            head = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[0x0020000E], force=True)
            groups[str(head.SeriesInstanceUID)].append(f)
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            log.warning("skipped %s: not a DICOM object with a Series Instance UID", f.name)
            skipped.append(f)
    return groups


def cmd_protect(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if args.plugin not in available():
        raise UsageError(f"no plugin named {args.plugin!r}; installed: {available()}")
    route = RouteSpec(options=frozenset(args.option), plugin=args.plugin, protected_syntax=args.protected_syntax)
    files = _dicom_files(args.input)
    single = args.input.is_file() and args.output.suffix.lower() == ".dcm"
    if not single:
        args.output.mkdir(parents=True, exist_ok=True)
    keys = MemoryDataKeys()
    failed = 0
    skipped: list[Path] = []
    groups = _by_series(files, skipped)
    with tqdm(total=sum(len(g) for g in groups.values()), unit="obj", desc="protect") as bar:
        for members in groups.values():
            written: list[Path] = []
            try:
                for batch in protect_batches(members, route, ring, keys):
                    for out in batch:
                        written.append(args.output if single else args.output / f"{out.sop_uid}.dcm")
                        written[-1].write_bytes(out.data)
            except Exception as exc:  # noqa: BLE001 - one bad series must not stop the rest
                failed += len(members)
                for path in written:  # nothing of a refused series is left behind
                    path.unlink(missing_ok=True)
                reason = str(exc) if isinstance(exc, Quarantine) else f"internal error ({type(exc).__name__})"
                log.error("a series of %d object(s) (%s, ...) was not protected: %s", len(members), members[0].name,
                          reason)
            bar.update(len(members))
    print(f"protected {sum(len(g) for g in groups.values()) - failed} object(s), refused {failed}"
          f"{_skipped_note(skipped)}")
    return 1 if failed or skipped else 0


def cmd_restore(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    files = _dicom_files(args.input)
    single = args.input.is_file() and args.output.suffix.lower() == ".dcm"
    if not single:
        args.output.mkdir(parents=True, exist_ok=True)
    failed = 0
    skipped: list[Path] = []
    groups = _by_series(files, skipped)
    with tqdm(total=sum(len(g) for g in groups.values()), unit="obj", desc="restore") as bar:
        for members in groups.values():
            for member, outcome in zip(members, restore_series([m.read_bytes() for m in members], ring), strict=True):
                if outcome.data is None:
                    failed += 1
                    log.error("%s was not restored: %s", member.name, outcome.error)
                else:
                    (args.output if single else args.output / member.name).write_bytes(outcome.data)
            bar.update(len(members))
    print(f"restored {sum(len(g) for g in groups.values()) - failed} object(s), failed {failed}"
          f"{_skipped_note(skipped)}")
    return 1 if failed or skipped else 0


def _skipped_note(skipped: list[Path]) -> str:
    if not skipped:
        return ""
    names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    return f", skipped {len(skipped)} file(s) that are not DICOM objects with a Series Instance UID: {names}"


# -- keys -----------------------------------------------------------------------------


def cmd_keys_init(args: argparse.Namespace) -> int:
    ring = Keyring.create(args.keyring)
    print(f"created {args.keyring} (mode 0600) with active key {ring.active}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if args.authenticity:
        new = ring.rotate_authenticity()
        if args.config is not None:
            _audit_rotation(load_config(args.config), new)
        print(f"added authenticity key {new}; export it to Orthanc ('gateway keys export-authenticity') "
              "before the gateway forwards again, then restart the gateway")
        return 0
    new = ring.rotate()
    if args.config is not None:
        _audit_rotation(load_config(args.config), new)
    print(f"added key {new}; it seals new envelopes; {len(ring.keks) - 1} older key(s) kept for opening")
    return 0


def _audit_rotation(config: Config, key_id: str) -> None:
    """The operator (login name) and the new key's id, never key material."""
    import getpass

    from gateway.atna import forwarder_for
    from gateway.audit import AuditLog, audit_path

    forward = forwarder_for(config)
    state = open_state(config)
    audit = AuditLog(audit_path(config), forward=forward, state=state)
    audit.record(getpass.getuser(), "", "key-rotation", "success", key_id=key_id)
    state.close()
    if forward is not None:
        forward.close()


def cmd_keys_list(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    for key_id in ring.keks:
        print(f"{key_id}  created {ring.created.get(key_id, '?')}{'  (active)' if key_id == ring.active else ''}")
    for key_id in ring.authenticity:
        active = "  (active)" if key_id == ring.authenticity_active else ""
        print(f"{key_id}  created {ring.created.get(key_id, '?')}  authenticity{active}")
    return 0


def cmd_keys_export_authenticity(args: argparse.Namespace) -> int:
    ring = Keyring.load(args.keyring)
    if not ring.authenticity:
        raise UsageError(f"{args.keyring} has no authenticity key: add one with 'gateway keys rotate --authenticity'")
    ring.export_authenticity(args.out, only_active=args.only_active)
    count = 1 if args.only_active else len(ring.authenticity)
    print(f"wrote {count} authenticity key(s) to {args.out} (mode 0600): give it to Orthanc's user")
    return 0


if __name__ == "__main__":
    sys.exit(main())
