"""Protecting a series while it still arrives, so that it leaves soon after it settles.

Without this the protect processes idle while the series settles, then do all of the
series' work at once. ``Ahead.step`` (the worker runs it every fraction of a second)
protects the objects that arrived since its last step, in the order received, of every
series that paused for ``PAUSE_SECONDS`` (a modality between two bursts, or done and the
series not yet settled), each copy written to this node's ``outbox/ahead`` folder and gated
under the identity found in the series so far. Once the series has settled, ``Ahead.complete``
protects what arrived after the last step, gates the earlier copies again for the values
that only later objects showed (``protect.regate``), and makes the copies the series'
outputs. The result is what protecting the settled series at once gives: the same copies,
each passed by the gate under every identifying value of the series, and nothing of the
series leaves before all of it has passed.

A series that cannot be completed so is protected again from its originals by the
ordinary path (``protect.protect_batches``): more than half of it arrived after the last
step (the ordinary path then costs less), an object re-sent on the way, its route or the
route's settings changed, the character sets or the identity handed to the route's
stages changed between objects, or any fault while protecting ahead (the ordinary path
then meets it and says what it is). A route whose transform needs the whole series at once
(coverless) is not protected ahead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gateway.keyring import Keyring
from gateway.protect import Arrived, Protected, Quarantine, by_size, protect_arriving, regate
from gateway.protect_pool import ProtectPool
from gateway.route_spec import RouteSpec
from gateway.spool import Incoming, Spool

log = logging.getLogger("gateway.protect")

# A series is protected ahead once it received nothing for this long: while objects keep
# coming, intake (a modality waits for each answer) has the cores. Measured: protecting
# during the transfer itself took a fifth of one association's intake rate.
PAUSE_SECONDS = 0.3
# How the worker's ``eligible`` answers for a series: the route's name and spec, or None
# (not protected ahead: settled series take the ordinary path).
Eligible = Callable[[str, list[Incoming]], "tuple[str, RouteSpec] | None"]


@dataclass
class _Series:
    """What was protected ahead of one series."""

    route: str
    spec: RouteSpec
    parts: list[Arrived] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # the row of each copy in ``parts``, in order


class Ahead:
    """The series of this node being protected while they arrive."""

    def __init__(self, spool: Spool, keyring: Keyring, pool: ProtectPool, eligible: Eligible,
                 settle_seconds: Callable[[], float]) -> None:
        self.spool = spool
        self.keyring = keyring
        self.pool = pool
        self.eligible = eligible
        self.settle_seconds = settle_seconds
        self._series: dict[str, _Series] = {}
        self._skip: set[str] = set()  # series left to the ordinary path
        self._seen: dict[str, tuple[int, int]] = {}  # the rows of each series all protected: count, newest id
        self._lock = threading.Lock()  # a step and a completion never work on the same series at once

    def step(self, stop: threading.Event | None = None) -> None:
        """Protect what arrived since the last step, series by series, one batch each, of
        the series that paused for ``PAUSE_SECONDS`` (and have not settled yet)."""
        now = time.time()
        receiving = {token for token, _, _ in self.spool.receiving_series()}
        with self._lock:
            for token in [t for t in self._series if t not in receiving]:  # protected elsewhere, or quarantined
                self._drop(token)
            self._skip &= receiving
            self._seen = {t: seen for t, seen in self._seen.items() if t in receiving}
        # not those settled (the worker completes them), nor those still coming in: intake first
        for token, seen in self.spool.paused_series(now - self.settle_seconds(), now - PAUSE_SECONDS).items():
            if stop is not None and stop.is_set():
                return
            if token in self._skip or self._seen.get(token) == seen:
                continue  # nothing new since the last step
            with self._lock:
                if self._advance(token, self.spool.arriving(token)):
                    self._seen[token] = seen

    def complete(self, token: str, items: list[Incoming], route: str, spec: RouteSpec) -> list[Protected] | None:
        """The protected copies of the settled series ``items`` (in their order, adopted as
        the outputs of their rows), or None where the series must be protected the ordinary
        way. Raises Quarantine where the gate stops a copy protected ahead."""
        with self._lock:
            series = self._series.pop(token, None)
            skipped = token in self._skip
            self._skip.discard(token)
            # more left than was protected ahead: the ordinary path is cheaper (no second look)
            fresh = _fresh(series, items) if series is not None else None
            if series is None or fresh is None or skipped or (series.route, series.spec) != (route, spec) \
                    or len(items) > 2 * len(series.rows):
                if series is not None:
                    self._remove(series)
                return None
            try:
                for portion in by_size([i.path for i in fresh]):
                    self._protect(series, [fresh[n] for n in portion])
                if not regate(series.parts, self.pool):
                    self._remove(series)
                    return None
                made = {row: p for row, p in zip(series.rows, (p for part in series.parts for p in part.protected),
                                                  strict=True)}
                return [self._adopt(made[i.id], i.id) for i in items]
            except Quarantine:
                self._remove(series)
                raise
            except Exception as exc:  # noqa: BLE001 - the ordinary path meets the fault again and says what it is
                log.warning("series %s: completing what was protected ahead failed (%s); protecting it again",
                            token, type(exc).__name__)
                self._remove(series)
                return None

    def _advance(self, token: str, items: list[Incoming]) -> bool:
        """Protect a batch of what arrived; True once all of it is protected (and gated again)."""
        series = self._series.get(token)
        if series is None:
            chosen = self.eligible(token, items) if items else None
            if chosen is None:
                self._skip.add(token)
                return False
            series = self._series[token] = _Series(*chosen)
        fresh = _fresh(series, items)
        if fresh is None:
            self._skip.add(token)
            self._drop(token)
            return False
        try:
            if fresh:
                portion = by_size([i.path for i in fresh])[0]  # a batch at most
                self._protect(series, [fresh[n] for n in portion])
                fresh = fresh[len(portion):]
            if not fresh and len(series.parts) > 1 and not self._consolidated(series):
                self._skip.add(token)
                self._drop(token)
                return False
        except Exception as exc:  # noqa: BLE001 - left to the ordinary path, which reports it
            log.info("series %s: not protected ahead (%s); it is protected once it settles", token,
                     type(exc).__name__)
            self._skip.add(token)
            self._drop(token)
            return False
        return not fresh

    def _consolidated(self, series: _Series) -> bool:
        """All that arrived is protected: the gate's second look now, before the series
        settles, so that at the settle only what comes after is left. Every copy has then
        passed the gate under the survey of the whole series so far: one part. False where
        ``regate`` says the series must be protected the ordinary way; raises Quarantine."""
        if not regate(series.parts, self.pool):
            return False
        last = series.parts[-1]
        series.parts = [Arrived([p for part in series.parts for p in part.protected], last.job)]
        return True

    def _protect(self, series: _Series, items: list[Incoming]) -> None:
        before = series.parts[-1] if series.parts else None
        arrived = protect_arriving([(n, i.path) for n, i in enumerate(items)], series.spec, self.keyring,
                                   self.spool, self.pool, [self.spool.ahead_path(i.id) for i in items], before)
        series.parts.append(arrived)
        series.rows += [i.id for i in items]

    def _adopt(self, protected: Protected, row: int) -> Protected:
        assert protected.path is not None, "protected ahead means written"
        return replace(protected, path=self.spool.adopt(protected.path, row))

    def _drop(self, token: str) -> None:
        series = self._series.pop(token, None)
        if series is not None:
            self._remove(series)

    def _remove(self, series: _Series) -> None:
        for row in series.rows:
            self.spool.ahead_path(row).unlink(missing_ok=True)


def _fresh(series: _Series, items: list[Incoming]) -> list[Incoming] | None:
    """The objects of ``items`` not protected ahead yet; None where an object protected ahead
    is no longer among them (re-sent: its earlier copy is gone)."""
    done = set(series.rows)
    if not done <= {i.id for i in items}:
        return None
    return [i for i in items if i.id not in done]
