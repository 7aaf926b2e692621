"""Prometheus metrics of one gateway process.

Counters are bumped where things happen (C-STORE answers, objects sent to workstations);
the spool's queue depths are read at scrape time, so they are never stale and cost
nothing between scrapes. Labels carry outcomes and states only, never identity.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.spool import SPOOL_STATES, Spool

QUARANTINE_ACTIONS = ("release", "reroute", "delete", "retention_purge")


class Metrics:
    """One registry per gateway (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.c_store = Counter("gateway_c_store", "C-STORE requests answered, by outcome",
                               ["outcome"], registry=self.registry)
        self.associations_refused = Counter("gateway_associations_refused", "Associations rejected",
                                            registry=self.registry)
        self.retrieved = Counter("gateway_retrieve_objects",
                                 "Objects for workstations: sent, or refused because they did not restore exactly",
                                 ["policy", "outcome"], registry=self.registry)

    def watch(self, spool: Spool) -> None:
        self.registry.register(_SpoolCollector(spool))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SpoolCollector(Collector):
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        counts = self.spool.counts()
        objects = GaugeMetricFamily("gateway_spool_objects", "Objects in the spool, by state", labels=["state"])
        for state in SPOOL_STATES:
            objects.add_metric([state], counts.get(state, 0))
        yield objects
        yield GaugeMetricFamily("gateway_forward_backlog", "Protected objects waiting for Orthanc",
                                value=counts.get("protected", 0))
        yield GaugeMetricFamily("gateway_series_needing_attention", "Quarantined or failing series",
                                value=len(self.spool.problem_series(limit=1000)))
        # Counted in the spool, so actions of the `gateway quarantine` command (another
        # process) show here too.
        taken = self.spool.action_counts()
        actions = CounterMetricFamily("gateway_quarantine_actions", "Quarantine actions taken, by action",
                                      labels=["action"])
        for action in QUARANTINE_ACTIONS:
            actions.add_metric([action], taken.get(action, 0))
        yield actions
