"""``gateway quarantine list|show|release|reroute|delete``: what an administrator does with
series the gateway set aside (quarantined, or objects Orthanc refused).

Series are named by their pseudonym (the protected Series Instance UID, as in ``gateway
status`` and the logs). ``show`` says why, where and what the sender was, never a value.
``release`` puts the series back through the pipeline, gate included, by its route or the
one ``reroute`` names; ``delete`` removes its originals. Every action is written to the
audit log with who ran it, and counted in ``/metrics``. The commands work beside a running
gateway: they change the spool's rows and files, and the service picks the series up.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydicom.uid import UID

from gateway.audit import AuditLog, audit_path
from gateway.config import Config, ConfigError, load_config
from gateway.spool import Spool
from gateway.state.engine import open_state


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``quarantine`` and its actions to the ``gateway`` command."""
    actions = sub.add_parser("quarantine", help="list, inspect, release, re-route or delete set-aside series") \
        .add_subparsers(required=True, metavar="ACTION")
    for name, fn, text in (
        ("list", _list, "series set aside, newest first"),
        ("show", _show, "why a series was set aside, where, and what sent it (no values)"),
        ("release", _release, "protect the series again through its route (the PHI gate still on)"),
        ("reroute", _release, "protect the series again through the route named by --route"),
        ("delete", _delete, "delete the series' originals"),
    ):
        s = actions.add_parser(name, help=text)
        s.add_argument("--config", type=Path, required=True)
        if name != "list":
            s.add_argument("series", help="the series pseudonym (as `gateway quarantine list` shows it)")
        if name == "reroute":
            s.add_argument("--route", required=True, help="a route name from the configuration")
        if name in ("release", "reroute", "delete"):
            s.add_argument("--by", default=_operator(), help="who runs this, for the audit log (default: %(default)s)")
        s.set_defaults(func=_run(fn), action_name=name)


def _operator() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


Action = Callable[[argparse.Namespace, Config, Spool, AuditLog], int]


def _run(fn: Action) -> Callable[[argparse.Namespace], int]:
    """Open the spool without touching the files a running gateway is receiving."""
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        if not config.spool.path.exists():
            raise ConfigError(f"spool {config.spool.path} does not exist yet: the gateway has not run with this config")
        state = open_state(config)
        spool = Spool(config.spool.path, intake=False, state=state)
        try:
            return int(fn(args, config, spool, AuditLog(audit_path(config), state=state)))
        finally:
            state.close()

    return run


def _list(args: argparse.Namespace, config: Config, spool: Spool, audit: AuditLog) -> int:
    rows = spool.set_aside()
    print(f"{len(rows)} series set aside")
    for row in rows:
        print(f"  {_stamp(row.updated_at)}  {row.series_token}  {row.state:11} {row.objects:5} object(s)"
              f"  route {row.route or '-'}: {_one_line(row.reason)}")
    return 0


def _show(args: argparse.Namespace, config: Config, spool: Spool, audit: AuditLog) -> int:
    found = spool.series_detail(args.series)
    if found is None:
        return _not_found(args.series)
    row, objects = found
    print(f"series      {row.series_token}")
    print(f"state       {row.state} since {_stamp(row.updated_at)}")
    print(f"route       {row.route or '(none matched)'}")
    print("why")
    for line in _reason_lines(row.reason or next((str(o["error"]) for o in objects if o["error"]), None)):
        print(f"  {line}")
    print(f"objects     {len(objects)}")
    for o in objects:
        sop_class = str(o["sop_class_uid"])
        print(f"  {o['object']}  from {o['sender']}  {o['modality'] or '-':4} {UID(sop_class).name or sop_class}"
              f"  received {_stamp(float(str(o['received_at'])))}  {o['state']}"
              + (f": {_one_line(str(o['error']))}" if o["error"] and o["error"] != row.reason else ""))
    return 0


def _release(args: argparse.Namespace, config: Config, spool: Spool, audit: AuditLog) -> int:
    route = getattr(args, "route", None)
    if route is not None and route not in {r.name for r in config.routes}:
        print(f"gateway: no route named {route!r} in {args.config}; routes: {[r.name for r in config.routes]}",
              file=sys.stderr)
        return 2
    if spool.series_detail(args.series) is None:
        return _not_found(args.series)
    n = spool.release(args.series, route)
    audit.record(args.by, "local", f"quarantine_{args.action_name}", "done", series=args.series, objects=n,
                 route=route)
    how = f"through route {route}" if route else "through its route"
    print(f"released {n} object(s) of series {args.series}; the gateway protects them again {how}")
    return 0


def _delete(args: argparse.Namespace, config: Config, spool: Spool, audit: AuditLog) -> int:
    if spool.series_detail(args.series) is None:
        return _not_found(args.series)
    n = spool.delete_set_aside(args.series)
    audit.record(args.by, "local", "quarantine_delete", "done", series=args.series, objects=n)
    print(f"deleted the originals of {n} object(s) of series {args.series}")
    return 0


def _not_found(series: str) -> int:
    print(f"gateway: no set-aside series {series}; `gateway quarantine list` shows them", file=sys.stderr)
    return 2


def _reason_lines(reason: str | None) -> list[str]:
    """The stored reason as the worker wrote it; a structured (JSON) one key by key."""
    if not reason:
        return ["(no reason recorded)"]
    try:
        data = json.loads(reason)
    except ValueError:
        return [reason]
    if isinstance(data, dict):
        return [f"{key}: {value}" for key, value in data.items()]
    if isinstance(data, list):
        return [json.dumps(item) if not isinstance(item, str) else item for item in data]
    return [reason]


def _one_line(reason: str | None) -> str:
    return " / ".join(_reason_lines(reason))


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when).isoformat(timespec="seconds")

