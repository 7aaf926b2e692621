"""Reload without restart: what a new configuration may change while the gateway runs.

Senders, routes, profiles, retrieval policies and destinations, storage commitment and
audit settings take effect for the next association, series or request; work in progress
finishes under the configuration it started with. What the running process is built
around (the listening socket, the spool, the keyring, the Orthanc connection, the status
endpoint, the job intervals) needs a restart: a reload that changes any of it is refused
whole, naming the keys, and the old configuration keeps running.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from gateway.config import Config, ConfigError

RESTART_ONLY = ("listener", "spool", "state", "keyring", "orthanc", "status_http", "scheduler.poll_seconds",
                "storage_commitment.poll_seconds")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The RESTART_ONLY keys whose value differs."""
    def value(config: Config, key: str) -> object:
        for part in key.split("."):
            config = getattr(config, part)
        return config

    return [key for key in RESTART_ONLY if value(old, key) != value(new, key)]


def check_reloadable(old: Config, new: Config, path: Path) -> None:
    changed = restart_only_changes(old, new)
    if changed:
        raise ConfigError(f"{path}: reload refused: {', '.join(changed)} changed; these take effect only at a restart"
                          " (the running configuration is unchanged)")


def pid_file(config: Config) -> Path:
    """Where ``gateway serve`` writes its process id, for ``gateway reload`` (on a spool folder
    that several nodes share, one file per node)."""
    return config.spool.path / ("gateway.pid" if not config.state.url else f"gateway.{config.state.node}.pid")


def signal_running(config: Config) -> int:
    """Send SIGHUP to the gateway serving ``config``; returns its pid."""
    path = pid_file(config)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise ConfigError(f"no running gateway for this configuration ({path} missing, unreadable or stale):"
                          " start it with 'gateway serve'") from None
    return pid
