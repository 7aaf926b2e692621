"""The transforms a route applies, in order, and how to find them again on restore.

Burned-in text redaction (when a route asks for it) runs first, then the route's privacy
plugin, then (``protected_syntax: lossless``) the lossless copy for Orthanc. All have the
plugin shape (gateway.plugin.Transform) and are found by entry point: redaction in the
group ``gateway.stages`` (it is configured by a route's ``redaction:`` mapping, not chosen as
its plugin), privacy transforms in ``gateway.plugins``; the lossless copy is the gateway's
own. The envelope records each stage's name, so restore finds the same code without the
route's configuration.
"""

from __future__ import annotations

import functools

from gateway import lossless_copy, plugin
from gateway.lossless_copy import LosslessCopy
from gateway.plugin import Transform
from gateway.route_spec import RouteSpec

REDACTION = "redaction"


def build_stages(route: RouteSpec) -> list[Transform]:
    stages: list[Transform] = []
    if route.redaction is not None:
        stages.append(plugin.load(REDACTION, route.redaction, group=plugin.STAGE_GROUP))
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
    return plugin.load(name, group=plugin.STAGE_GROUP if name == REDACTION else plugin.ENTRY_POINT_GROUP)
