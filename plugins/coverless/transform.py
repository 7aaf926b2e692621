"""The coverless transform: the series' identifying text travels as row numbers of a hash
table that only the images themselves can rebuild (Tan et al. 2020). Pixels are never
changed.

Protect maps every value of ``ctx.identity`` to row numbers; a value with a character the
table cannot carry follows the route's ``fallback``: ``envelope`` seals the value itself
(it is encrypted there anyway), ``refuse`` stops the series (quarantine). Restore rebuilds
the table from the images it receives, demaps, checks the keyed identity digest and
fills ``ctx.identity``; any difference is a PluginError, never a wrong name.
"""

from __future__ import annotations

import hmac

from pydicom.dataset import Dataset

from gateway.plugin import Context, PluginError
from plugins.coverless import record as rec
from plugins.coverless.index_table import DemapError
from plugins.coverless.ordering import ORDERINGS
from plugins.coverless.series_table import METHOD, SeriesTable, TableUnavailable, build

FALLBACKS = ("envelope", "refuse")


class CoverlessTransform:
    name = "coverless"
    series_level = True

    def __init__(self, ordering: str = "auto", fallback: str = "envelope", workers: int = 0, **unknown: object) -> None:
        # PluginError, not ValueError: the worker quarantines the series with this reason
        # instead of retrying it forever.
        if unknown:
            names = ", ".join(sorted(unknown))
            raise PluginError(f"coverless has no setting {names}; its settings: ordering, fallback, workers")
        if ordering not in ORDERINGS:
            raise PluginError(f"coverless ordering must be one of {ORDERINGS}, not {ordering!r}")
        if fallback not in FALLBACKS:
            raise PluginError(f"coverless fallback must be one of {FALLBACKS}, not {fallback!r}")
        if not isinstance(workers, int) or workers < 0:
            raise PluginError("coverless workers must be a whole number >= 0 (0: one per CPU)")
        self.ordering, self.fallback, self.workers = ordering, fallback, workers

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        identity = dict(ctx.identity)
        built: SeriesTable | None = None
        why = ""
        if identity:
            try:
                built = build(series, self.ordering, self.workers)
            except TableUnavailable as exc:
                why = str(exc)
        rows: dict[str, list[int]] = {}
        sealed: dict[str, str] = {}
        for keyword, value in sorted(identity.items()):
            if built is not None and not built.table.missing(value):
                rows[keyword] = built.table.encode(value)
            else:
                sealed[keyword] = value
        self._report(ctx, len(series), built, rows, sealed, why)
        if sealed and self.fallback == "refuse":
            raise PluginError(f"the hash table cannot carry {', '.join(sorted(sealed))} and the fallback is refuse")
        record = rec.Record(
            method=METHOD,
            ordering=built.ordering if built else "",
            count=len(series),
            table_digest=rec.table_digest(ctx, built.rows.digest_bytes()) if built else "",
            identity_digest=rec.identity_digest(ctx, identity),
            rows=rows,
            sealed=sealed,
        )
        records = [b""] * len(series)
        records[built.order[0] if built else 0] = record.to_bytes()
        return records

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        held = [r for r in records if r]
        if not held:
            ctx.log.warning("coverless: none of these %d instances holds the table record; "
                            "identity not demapped (only part of the series)", len(series))
            return
        try:
            record = rec.Record.from_bytes(held[0])
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        if len(series) != record.count:
            ctx.log.warning("coverless: %d of the series' %d instances present; identity not demapped",
                            len(series), record.count)
            return
        identity = dict(record.sealed)
        if record.rows:
            identity.update(self._demap(series, record, ctx))
        if not hmac.compare_digest(rec.identity_digest(ctx, identity), record.identity_digest):
            raise PluginError("the identity demapped from the rebuilt table does not match the sender's digest")
        ctx.identity.clear()
        ctx.identity.update(identity)
        ctx.log.info("coverless: identity demapped and verified (%d values from row numbers, %d sealed)",
                     len(record.rows), len(record.sealed))

    def _demap(self, series: list[Dataset], record: rec.Record, ctx: Context) -> dict[str, str]:
        if record.method != METHOD:
            raise PluginError("the record was made by another version of the coverless method")
        try:
            built = build(series, record.ordering, self.workers)
        except TableUnavailable as exc:
            raise PluginError(f"the index table cannot be rebuilt: {exc}") from None
        same = hmac.compare_digest(rec.table_digest(ctx, built.rows.digest_bytes()), record.table_digest)
        try:
            demapped = {kw: built.table.decode(rows) for kw, rows in record.rows.items()}
        except DemapError as exc:
            raise PluginError(f"{exc} (rebuilt table {'equals' if same else 'differs from'} the sender's)") from None
        if not same:
            ctx.log.warning("coverless: the rebuilt table differs from the sender's; relying on the identity digest")
        return demapped

    def _report(self, ctx: Context, count: int, built: SeriesTable | None, rows: dict[str, list[int]],
                sealed: dict[str, str], why: str) -> None:
        """One PHI-free log line: table size, coverage, which keywords fell back."""
        if built is None:
            if sealed:
                ctx.log.warning("coverless: no table for a series of %d (%s); %s sealed in the envelope (fallback %s)",
                                count, why or "nothing to carry", ", ".join(sorted(sealed)), self.fallback)
            return
        usable = int(built.rows.usable.sum())
        ctx.log.info("coverless: %d images ordered by %s, %d of %d rows usable, %d distinct hashes, "
                     "%d of %d characters covered; %d values as row numbers",
                     count, built.ordering, usable, len(built.rows.hashes), len(built.table.distinct),
                     len(built.table.covered()), len(built.table.alphabet), len(rows))
        if sealed:
            ctx.log.warning("coverless: the table cannot carry %s; %s (fallback %s)", ", ".join(sorted(sealed)),
                            "sealed in the envelope" if self.fallback == "envelope" else "series refused",
                            self.fallback)
