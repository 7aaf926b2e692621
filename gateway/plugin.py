"""The interface between the gateway and its privacy transforms (plugins).

A transform works on a whole series of already de-identified datasets, ordered as
received. ``protect`` may change them in place (pixel data, its own private block) and
returns one record per instance; the gateway seals each record in that instance's
recovery envelope, so a record is encrypted and authenticated without the plugin doing
anything. ``restore`` gets the protected series and the records back and must put the
pixel data back exactly; the gateway then checks the whole instance against a digest of
the original, so a plugin can never make the gateway return wrong data.

One record per instance (not one per series, as the first design sketch
had it) keeps every instance restorable on its own and keeps a series-level record
from being copied into hundreds of envelopes. A plugin that needs the whole series to
restore sets ``series_level = True`` and the gateway fetches the whole series for it.

A transform that cannot take some pixel data whatever its settings says so in an optional
``refuses`` attribute (kinds from gateway.frames: FLOAT, WIDE, ONE_BIT, UNDECODABLE);
``gateway check-config`` names them for each route, and protect raises PluginError for them.

Plugins are found through the entry point group ``gateway.plugins``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.dataset import Dataset

ENTRY_POINT_GROUP = "gateway.plugins"
STAGE_GROUP = "gateway.stages"  # stages that are not a route's privacy plugin (redaction)


@dataclass
class Context:
    """What a transform may use besides the pixels.

    ``series_key`` is secret material unique to the study (derived from the study's
    data key, which travels wrapped in the envelope), so a plugin can derive keys that
    the restoring side derives again. ``identity`` holds the original identifying text
    of the series (attribute keyword -> value) on protect; a plugin that carries
    identity itself (coverless) fills it on restore.
    """

    series_key: bytes
    identity: dict[str, str] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("gateway.plugin"))

    def key(self, label: str, length: int = 32) -> bytes:
        """A key for ``label`` (e.g. ``"noise_key/1.2.3"``), the same on both sides."""
        return HKDF(algorithm=SHA256(), length=length, salt=None, info=label.encode()).derive(
            self.series_key
        )


class PluginError(Exception):
    """A transform could not protect or restore; the message names what went wrong."""


@runtime_checkable
class Transform(Protocol):
    """A reversible privacy transform over one series."""

    name: str
    series_level: bool

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        """Transform ``series`` in place; return one restore record per instance."""
        ...

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        """Undo ``protect`` in place, using the records it returned."""
        ...


def refused_kinds(transform: object) -> tuple[str, ...]:
    """What ``transform`` says it refuses (an older plugin without ``refuses``: nothing said)."""
    return tuple(getattr(transform, "refuses", ()))


def available() -> list[str]:
    """Names of the transforms installed on this machine."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load(name: str, settings: dict[str, Any] | None = None, group: str = ENTRY_POINT_GROUP) -> Transform:
    """Instantiate the transform registered as ``name`` in ``group`` with its route settings."""
    eps = _registered(group)
    if name not in eps:
        raise PluginError(f"no {'privacy plugin' if group == ENTRY_POINT_GROUP else 'stage'} named {name!r}; "
                          f"installed: {sorted(eps)}")
    cls = eps[name].load()
    return cls(**(settings or {}))


@functools.cache
def _registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group``, read once: scanning the installed packages' metadata
    takes milliseconds, and every restore of a series names its stages."""
    return {ep.name: ep for ep in entry_points(group=group)}
