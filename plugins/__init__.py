"""Privacy transforms shipped with the gateway, one sub-package each (see gateway.plugin)."""
