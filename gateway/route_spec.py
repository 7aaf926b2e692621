"""What a route asks the protect path for, decoupled from the config file's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config


@dataclass(frozen=True)
class RouteSpec:
    """De-identification options, private blocks kept, the privacy plugin and redaction."""

    options: frozenset[str] = frozenset()
    keep_private: tuple[tuple[int, str], ...] = ()
    plugin: str = "none"
    plugin_settings: dict[str, Any] = field(default_factory=dict)
    redaction: dict[str, Any] | None = None
    protected_syntax: str = "uncompressed"  # or "lossless": gateway.lossless_copy


def route_spec(config: Config, route_name: str, destination: str = "orthanc") -> RouteSpec:
    """The spec of the route called ``route_name`` in ``config`` for one of its destinations:
    the destination's own profile and transform where it names them, the route's otherwise."""
    route = next(r for r in config.routes if r.name == route_name)
    dest = next((d for d in route.destinations if d.destination == destination), None)
    own = dest.model_dump(exclude_none=True) if dest is not None else {}
    profile = config.profiles[own.get("profile", route.profile)]
    redaction = own.get("redaction", route.redaction)
    return RouteSpec(
        options=frozenset(profile.options),
        keep_private=tuple((k.group, k.creator) for k in profile.keep_private),
        plugin=own.get("plugin", route.plugin),
        plugin_settings=dict(own.get("plugin_settings", route.plugin_settings)),
        redaction=dict(redaction) if redaction is not None else None,
        protected_syntax=route.protected_syntax,
    )
