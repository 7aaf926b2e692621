"""The transforms a route applies, in order, and how to find them again on restore.

Burned-in text redaction (when a route asks for it) runs first, then the route's privacy
plugin, then (``protected_syntax: lossless``) the lossless copy for Orthanc. Both have the plugin shape (gateway.plugin.Transform); the envelope records each
stage's name, so restore finds the same code without the route's configuration.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from gateway import lossless_copy, plugin
from gateway.lossless_copy import LosslessCopy
from gateway.plugin import Transform

if TYPE_CHECKING:
    from gateway.protect import RouteSpec

REDACTION = "redaction"


def build_stages(route: RouteSpec) -> list[Transform]:
    stages: list[Transform] = []
    if route.redaction is not None:
        stages.append(_redaction(route.redaction))
    stages.append(plugin.load(route.plugin, route.plugin_settings))
    if route.protected_syntax == "lossless":
        stages.append(LosslessCopy())
    return stages


@functools.cache
def is_series_level(name: str) -> bool:
    """Whether the stage called ``name`` restores only a whole series at once."""
    try:
        return bool(stage_by_name(name).series_level)
    except plugin.PluginError:
        return False


def stage_by_name(name: str) -> Transform:
    """The stage that wrote a record called ``name``, with default settings."""
    if name == lossless_copy.NAME:
        return LosslessCopy()
    return _redaction({}) if name == REDACTION else plugin.load(name)


def _redaction(settings: dict) -> Transform:  # type: ignore[type-arg]
    try:
        from gateway.redaction import RedactionStage  # type: ignore[attr-defined]
    except ImportError:
        raise plugin.PluginError("burned-in text redaction is not installed in this gateway") from None
    return RedactionStage(**settings)  # type: ignore[no-any-return]
