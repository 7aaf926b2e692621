"""The coverless transform: the series' identifying text travels as row numbers of a hash
table that only the images themselves can rebuild (Tan et al. 2020). Pixels are never
changed.

Protect maps every value of ``ctx.identity`` to cell numbers of the table (method 2: each
bit carried by several cells, read by a vote); a series whose table cannot carry them
follows the route's ``fallback``: ``envelope`` seals the values themselves (they are
encrypted there anyway), ``refuse`` stops the series (quarantine). Restore rebuilds the
table from the images it receives, demaps, checks the keyed identity digest and fills
``ctx.identity``; any difference is a PluginError, never a wrong name. Records of version
1 (method 1, the paper's one row per character) still restore.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from pydicom.dataset import Dataset

from gateway.plugin import Context, PluginError
from plugins.coverless import carriers
from plugins.coverless import record as rec
from plugins.coverless.index_table import DemapError
from plugins.coverless.ordering import ORDERINGS
from plugins.coverless.series_table import METHOD, METHOD_2, CellTable, TableUnavailable, build, build_cells

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
        built: CellTable | None = None
        why = ""
        rows: dict[str, list[int]] = {}
        if identity:
            try:
                built = build_cells(series, self.ordering, self.workers)
                rows = carriers.encode(built.values, identity)
            except (TableUnavailable, carriers.CannotCarry) as exc:
                why = str(exc)
        sealed = {k: v for k, v in identity.items() if k not in rows}
        self._report(ctx, len(series), built, rows, sealed, why)
        if sealed and self.fallback == "refuse":
            raise PluginError(f"the hash table cannot carry {', '.join(sorted(sealed))} and the fallback is refuse")
        record = rec.Record(
            method=METHOD_2,
            ordering=built.ordering if built else "",
            count=len(series),
            table_digest=rec.table_digest(ctx, built.digest_bytes()) if built else "",
            identity_digest=rec.identity_digest(ctx, identity),
            rows=rows,
            sealed=sealed,
            window=built.window if built else 0,
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
        tried = 0
        for demapped in self._candidates(series, record, ctx):
            tried += 1
            identity = {**record.sealed, **demapped}
            if hmac.compare_digest(rec.identity_digest(ctx, identity), record.identity_digest):
                ctx.identity.clear()
                ctx.identity.update(identity)
                ctx.log.info("coverless: identity demapped and verified (%d values from the table, %d sealed; "
                             "candidate %d)", len(record.rows), len(record.sealed), tried)
                return
        raise PluginError(f"the identity demapped from the rebuilt table does not match the sender's digest "
                          f"({tried} candidates tried)")

    def _candidates(self, series: list[Dataset], record: rec.Record, ctx: Context) -> Iterator[dict[str, str]]:
        """Identities to check against the digest (the sealed values alone when none is carried)."""
        if not record.rows:
            yield {}
        elif record.version == 1:
            yield self._demap_v1(series, record, ctx)
        else:
            yield from self._demap_cells(series, record, ctx)

    def _demap_cells(self, series: list[Dataset], record: rec.Record, ctx: Context) -> Iterator[dict[str, str]]:
        if record.method != METHOD_2 or record.window < 1:
            raise PluginError("the record was made by another version of the coverless method")
        try:
            built = build_cells(series, record.ordering, self.workers, record.window)
        except TableUnavailable as exc:
            raise PluginError(f"the index table cannot be rebuilt: {exc}") from None
        if not hmac.compare_digest(rec.table_digest(ctx, built.digest_bytes()), record.table_digest):
            ctx.log.warning("coverless: the rebuilt table differs from the sender's; voting, then the identity digest")
        try:
            yield from carriers.candidates(built.values, record.rows, record.method["votes"])
        except (IndexError, ValueError) as exc:
            raise PluginError(f"the record's cells do not fit the rebuilt table ({type(exc).__name__})") from None

    def _demap_v1(self, series: list[Dataset], record: rec.Record, ctx: Context) -> dict[str, str]:
        """Version-1 records: the paper's index table, one row per character."""
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

    def _report(self, ctx: Context, count: int, built: CellTable | None, rows: dict[str, list[int]],
                sealed: dict[str, str], why: str) -> None:
        """One PHI-free log line: table size, cells, which keywords fell back."""
        if built is None or not rows:
            if sealed:
                ctx.log.warning("coverless: no table for a series of %d (%s); %s sealed in the envelope (fallback %s)",
                                count, why or "nothing to carry", ", ".join(sorted(sealed)), self.fallback)
            return
        ctx.log.info("coverless: %d images ordered by %s, window %d, %d cells; %d values carried by %d cells "
                     "(%d votes a bit)", count, built.ordering, built.window, len(built.values), len(rows),
                     sum(len(r) for r in rows.values()), carriers.VOTES)
