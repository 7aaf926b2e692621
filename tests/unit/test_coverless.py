"""Coverless transform: its building blocks against plain references, the round trip
through the gateway, and the promises: never a wrong identity, the same table on any
machine, the fallback visible in the log without PHI."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from gateway.keyring import Keyring
from gateway.plugin import Context, PluginError
from gateway.protect import Quarantine, protect_series
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from plugins.coverless import CoverlessTransform, carriers, features, hashing, ordering, rpca, series_table
from plugins.coverless import record as rec
from plugins.coverless.body_roi import otsu_threshold, roi_filtered
from plugins.coverless.features import image_features
from plugins.coverless.index_table import ALPHABET, PAPER_ALPHABET, DemapError, IndexTable
from plugins.coverless.lbp_features import feature_rows, lbp
from testkit import synthetic
from tests.conftest import encode

IDENTITY = synthetic.Identity()


@pytest.fixture(scope="module")
def series() -> list:  # type: ignore[type-arg]
    """A 40-slice 128x128 phantom series (the working size is 256: upsampled exactly)."""
    return synthetic.ct_series(40, 128, seed=5)


CARRIED = {"PatientName": "DOE^JANE^Q", "PatientID": "PID-4711-0815", "PatientSex": "F"}


@pytest.fixture(scope="module")
def records(series: list) -> list[bytes]:  # type: ignore[type-arg]
    """The plugin's records for ``CARRIED`` over ``series`` (protected once for the module)."""
    return CoverlessTransform().protect(series, _ctx(CARRIED))


def _ctx(identity: dict[str, str] | None = None, key: bytes = b"k" * 32) -> Context:
    return Context(series_key=key, identity=dict(identity or {}))


# -- building blocks against plain references ----------------------------------------------


def test_lbp_matches_a_pixel_by_pixel_reference() -> None:
    block = np.random.default_rng(1).integers(0, 4, size=(9, 11)).astype(np.uint8)  # many ties
    codes = lbp(block)
    offsets = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
    for y in range(1, 8):
        for x in range(1, 10):
            want = sum(1 << n for n, (dy, dx) in enumerate(offsets) if block[y + dy, x + dx] >= block[y, x])
            assert codes[y - 1, x - 1] == want


def test_feature_rows_are_the_sub_block_sums_of_each_quadrant() -> None:
    img = np.random.default_rng(2).integers(0, 256, size=(64, 64)).astype(np.uint8)
    rows = feature_rows(img)
    assert rows.shape == (4, 9)
    top_right = lbp(img[:32, 32:])  # 30 x 30 codes -> sub-blocks of 10 x 10
    assert rows[1, 0] == top_right[:10, :10].sum() and rows[1, 8] == top_right[20:, 20:].sum()
    assert rows.sum() == sum(lbp(q).sum() for q in (img[:32, :32], img[:32, 32:], img[32:, :32], img[32:, 32:]))


def test_otsu_is_the_textbook_threshold() -> None:
    rng = np.random.default_rng(3)
    img = np.concatenate([rng.normal(40, 10, 3000), rng.normal(170, 20, 2000)]).clip(0, 255).astype(np.uint8)
    hist = np.bincount(img, minlength=256).astype(float)
    p = hist / hist.sum()
    best = max(range(255), key=lambda t: (p[: t + 1].sum() * p[t + 1 :].sum()
               * ((p[: t + 1] * np.arange(t + 1)).sum() / max(p[: t + 1].sum(), 1e-12)
                  - (p[t + 1 :] * np.arange(t + 1, 256)).sum() / max(p[t + 1 :].sum(), 1e-12)) ** 2))
    assert otsu_threshold(img.reshape(50, 100)) == best


def test_roi_drops_small_components_such_as_burned_in_text() -> None:
    img = np.zeros((256, 256), dtype=np.uint8)
    img[60:200, 50:210] = 150  # the body
    img[10:16, 10:14] = 250  # a letter in the corner
    out = roi_filtered(img)
    assert out[12, 12] == 0 and out[130, 130] == 150


def test_low_rank_part_is_low_rank_and_close_to_a_low_rank_image() -> None:
    rng = np.random.default_rng(4)
    base = np.outer(np.linspace(0, 1, 128), np.linspace(1, 0.2, 128)) * 200
    corrupted = base.copy()
    spots = rng.random(base.shape) < 0.05
    corrupted[spots] = 255  # sparse outliers
    m = rpca.low_rank(corrupted.astype(np.uint8))
    assert np.abs(m.astype(float) - base).mean() < 3 < np.abs(corrupted - base).mean()


def test_hash_bits_are_at_least_the_row_mean_and_margins_are_exact() -> None:
    diffs = np.array([[9, 0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9]], dtype=np.int64)
    rows = hashing.row_hashes(diffs, margin=5)
    assert rows.hashes.tolist() == [0b100000000, 0b000011111]  # mean 5: 5..9 are >= it
    assert rows.margins.tolist() == [9, 0]  # 9*5 - 45 = 0: the value equal to the mean
    assert rows.usable.tolist() == [True, False]


def test_index_table_maps_sorted_hashes_in_turn_and_picks_the_largest_margin() -> None:
    hashes = np.array([7, 3, 7, 500, 3, 12], dtype=np.int64)
    margins = np.array([5000, 9000, 8000, 4000, 100, 3000], dtype=np.int64)
    rows = hashing.RowHashes(hashes=hashes, margins=margins, margin=2048)
    table = IndexTable(rows, alphabet="AB")
    assert table.distinct == [3, 7, 12, 500]
    assert table.char_of == {3: "A", 7: "B", 12: "A", 500: "B"}  # round again past the alphabet
    assert table.encode("BA") == [2, 1]  # row 2 (margin 8000) over row 0; row 4 is unusable
    assert table.decode([0, 5, 3]) == "BAB"
    with pytest.raises(DemapError):
        table.decode([4])  # margin too small: not a row of the table


def test_alphabet_covers_dicom_identity_and_the_paper_alphabet() -> None:
    assert set(PAPER_ALPHABET) <= set(ALPHABET) and "\\" not in ALPHABET
    for value in ("DOE^JANE^Q", "O'NEIL-SMITH^ANN=", "PID-4711/0815", "063Y", "St. Mary's Hospital, Ward 3"):
        assert set(value) <= set(ALPHABET)
    assert len(set(ALPHABET)) == len(ALPHABET) == 94


def test_window_differences_of_one_image_are_the_papers_and_wider_ones_are_sums() -> None:
    feats = np.random.default_rng(7).integers(0, 10**6, size=(12, 4, 9))
    assert np.array_equal(hashing.window_differences(feats, 1), hashing.difference_matrix(feats))
    wide = hashing.window_differences(feats, 3).reshape(-1, 4, 9)
    assert wide.shape == (12 - 6 + 1, 4, 9)
    assert np.array_equal(wide[2], feats[5:8].sum(axis=0) - feats[2:5].sum(axis=0))


def test_cells_carry_any_utf8_and_the_vote_outlasts_flipped_cells() -> None:
    values = np.random.default_rng(8).integers(-10**5, 10**5, size=3000)
    texts = {"PatientName": "MÜLLER^ANN", "PatientID": "Z0815-3", "PatientSex": ""}
    carried = carriers.encode(values, texts)
    assert [len(carried[k]) for k in sorted(texts)] == [8 * 7 * 5, 8 * 11 * 5, 0]
    used = np.concatenate([carried[k] for k in texts])
    assert len(set(used.tolist())) == len(used)  # no cell carries two bits while there are enough
    assert next(carriers.candidates(values, carried)) == texts
    hit = values.copy()
    name = np.asarray(carried["PatientName"]).reshape(-1, 5)
    hit[name[::8, :2]] *= -1  # two of five cells of every eighth bit flipped: the vote holds
    assert next(carriers.candidates(hit, carried)) == texts
    hit[name[8, 2]] *= -1  # a third for one bit: the vote is wrong there, a retry finds it
    tried = list(carriers.candidates(hit, carried))
    assert tried[0] != texts and texts in tried


def test_cells_need_enough_of_each_bit_and_numbers_inside_the_table() -> None:
    with pytest.raises(carriers.CannotCarry):
        carriers.encode(np.array([5, 7, 0, 0, -3]), {"PatientSex": "F"})
    with pytest.raises(IndexError):
        next(carriers.candidates(np.ones(10, dtype=np.int64), {"PatientSex": [3] * 39 + [10]}))


def test_method_two_table_is_the_same_in_a_worker_pool(series: list, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    single = series_table.build_cells(series, "geometry", workers=1)
    monkeypatch.setattr(features, "POOL_THRESHOLD", 0)
    pooled = series_table.build_cells(series, "geometry", workers=2)
    assert single.window == pooled.window == 5 and np.array_equal(single.values, pooled.values)
    assert (single.values != 0).mean() > 0.99


def test_version_one_records_still_restore(series: list) -> None:  # type: ignore[type-arg]
    """A record the paper's method (version 1) sealed before method 2 existed."""
    built = series_table.build(series, "auto")
    identity = {"PatientSex": "F", "PatientID": "PID4711"}
    ctx = _ctx(identity)
    old = rec.Record(method=series_table.METHOD, ordering=built.ordering, count=len(series),
                     table_digest=rec.table_digest(ctx, built.rows.digest_bytes()),
                     identity_digest=rec.identity_digest(ctx, identity),
                     rows={k: built.table.encode(v) for k, v in identity.items()}, version=1)
    assert b'"v":1' in old.to_bytes() and b"window" not in old.to_bytes()
    records = [b""] * len(series)
    records[built.order[0]] = old.to_bytes()
    back = _ctx()
    CoverlessTransform().restore(series, records, back)
    assert back.identity == identity
    records[built.order[0]] = old.to_bytes().replace(b'"v":1', b'"v":3')
    with pytest.raises(PluginError, match="unreadable coverless record"):
        CoverlessTransform().restore(series, records, _ctx())


# -- ordering ---------------------------------------------------------------------------


def test_geometry_order_does_not_depend_on_the_order_received(series: list) -> None:  # type: ignore[type-arg]
    shuffled = series[:]
    random.Random(1).shuffle(shuffled)
    order = ordering.geometry_order(shuffled)
    assert order is not None
    assert [int(shuffled[i].InstanceNumber) for i in order] == list(range(1, 41))


def test_feature_order_does_not_depend_on_the_order_received() -> None:
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(30)]
    feats = np.stack([np.array([i * 10, (i % 3) * 2]) for i in range(30)]).astype(np.int64)  # a line
    order = ordering.feature_order(feats, images)
    assert order in (list(range(30)), list(range(29, -1, -1)))
    perm = rng.permutation(30)
    again = ordering.feature_order(feats[perm], [images[i] for i in perm])
    assert [int(perm[i]) for i in again] == order


def test_without_geometry_the_network_orders_the_series_and_the_identity_round_trips() -> None:
    series = synthetic.ct_series(24, 128, seed=8)
    for ds in series:
        del ds.ImagePositionPatient, ds.InstanceNumber
    shuffled = series[:]
    random.Random(3).shuffle(shuffled)
    built = series_table.build(shuffled, "auto")
    assert built.ordering == "densenet"
    walked = [series.index(shuffled[i]) for i in built.order]
    assert walked in (list(range(24)), list(range(23, -1, -1)))  # the true slice order
    plugin = CoverlessTransform()
    records = plugin.protect(shuffled, _ctx(CARRIED))
    back = _ctx()
    plugin.restore(series, [records[shuffled.index(ds)] for ds in series], back)
    assert back.identity == CARRIED


# -- the same table everywhere ----------------------------------------------------------


def test_table_is_the_same_with_other_thread_counts_float32_and_a_worker_pool(
        series: list, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    images = series_table.working_images(series[:14])

    def rows(feats: np.ndarray) -> hashing.RowHashes:
        return hashing.row_hashes(hashing.difference_matrix(feats))

    with threadpool_limits(1):
        reference = rows(np.stack([image_features(img) for img in images]))
    with threadpool_limits(2):
        two_threads = rows(np.stack([image_features(img) for img in images]))
    single = rows(np.stack([feature_rows(rpca.low_rank(roi_filtered(img), np.float32)) for img in images]))
    monkeypatch.setattr(features, "POOL_THRESHOLD", 0)
    pooled = rows(features.series_features(images, workers=2))
    assert reference.usable.sum() > 20
    for other in (two_threads, single, pooled):
        assert other.digest_bytes() == reference.digest_bytes()  # usable rows and their hashes
    # float32 really is a different computation: it moves margins, only the margin check absorbs it
    assert 0 < np.abs(single.margins - reference.margins).max() < hashing.MARGIN


# -- through the gateway ----------------------------------------------------------------


def _protect(series: list, keyring: Keyring, **settings: object) -> list[bytes]:  # type: ignore[type-arg]
    route = RouteSpec(plugin="coverless", plugin_settings=dict(settings))
    return [p.data for p in protect_series([encode(ds) for ds in series], route, keyring, MemoryDataKeys())]


def test_round_trip_restores_exactly_and_demaps_the_identity(series: list, keyring: Keyring,  # type: ignore[type-arg]
                                                              caplog: pytest.LogCaptureFixture) -> None:
    originals = [encode(ds) for ds in series]
    with caplog.at_level(logging.INFO):
        protected = _protect(series, keyring)
    received = list(zip(originals, protected, strict=True))
    random.Random(2).shuffle(received)  # the PACS returns them in any order
    with caplog.at_level(logging.INFO):
        outcomes = restore_series([p for _, p in received], keyring)
    assert [o.data for o in outcomes] == [o for o, _ in received]
    assert "identity demapped and verified (9 values from the table, 0 sealed; candidate 1)" in caplog.text
    assert IDENTITY.patient_name not in caplog.text and IDENTITY.patient_id not in caplog.text


def test_demapped_identity_equals_the_original_and_wrong_keys_fail(series: list, records: list[bytes]) -> None:  # type: ignore[type-arg]
    plugin = CoverlessTransform()
    assert sum(1 for r in records if r) == 1
    assert b"DOE^JANE" not in b"".join(records) and b"4711" not in b"".join(records)  # row numbers, not text
    back = _ctx()
    plugin.restore(series[::-1], records[::-1], back)
    assert back.identity == CARRIED
    with pytest.raises(PluginError, match="digest"):
        plugin.restore(series, records, _ctx(key=b"x" * 32))  # another study's keys


def test_changed_images_are_voted_through_or_reported_never_a_wrong_name(series: list, records: list[bytes]) -> None:  # type: ignore[type-arg]
    plugin = CoverlessTransform()
    noisy = copy.deepcopy(series)
    rng = np.random.default_rng(0)
    for ds in noisy[::3]:  # noise of +-300 stored values on every third slice: the vote absorbs it
        pixels = ds.pixel_array.astype(np.int32) + rng.integers(-300, 300, (ds.Rows, ds.Columns))
        ds.PixelData = np.clip(pixels, 0, 2500).astype(np.uint16).tobytes()
    back = _ctx()
    plugin.restore(noisy, records, back)
    assert back.identity == CARRIED
    other = copy.deepcopy(series)  # another patient's anatomy, walked the other way: far too much
    for ds, donor in zip(other, synthetic.ct_series(40, 128, seed=99)[::-1], strict=True):
        ds.PixelData = donor.PixelData
    back = _ctx()
    with pytest.raises(PluginError, match="does not match the sender's digest"):
        plugin.restore(other, records, back)
    assert back.identity == {}


def test_a_record_whose_cells_do_not_fit_the_table_is_a_clear_failure(series: list, records: list[bytes]) -> None:  # type: ignore[type-arg]
    holder = next(i for i, r in enumerate(records) if r)
    raw = rec.Record.from_bytes(records[holder])
    bad = rec.Record(**{**raw.__dict__, "rows": {k: [10**9] * len(v) for k, v in raw.rows.items()}})
    tampered = [bad.to_bytes() if i == holder else r for i, r in enumerate(records)]
    back = _ctx()
    with pytest.raises(PluginError, match="cells do not fit the rebuilt table"):
        CoverlessTransform().restore(series, tampered, back)
    assert back.identity == {}


def test_fallback_envelope_logs_keywords_only_and_refuse_quarantines(keyring: Keyring,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    blank = synthetic.ct_series(4, 64, identity=synthetic.Identity(institution="Hôpital Émile"))
    for ds in blank:  # no anatomy: every cell sits on its threshold, none can carry a bit
        ds.PixelData = bytes(len(ds.PixelData))
    with caplog.at_level(logging.INFO):
        _protect(blank, keyring)
    assert "InstitutionName" in caplog.text and "sealed in the envelope (fallback envelope)" in caplog.text
    assert "mile" not in caplog.text and "DOE" not in caplog.text
    with pytest.raises(Quarantine, match="cannot carry .*InstitutionName.* fallback is refuse"):
        _protect(blank, keyring, fallback="refuse")


def test_a_partial_series_is_restored_without_demapping(series: list, records: list[bytes],  # type: ignore[type-arg]
                                                        caplog: pytest.LogCaptureFixture) -> None:
    holder = next(i for i, r in enumerate(records) if r)
    part = [i for i in range(len(series)) if i != (holder + 1) % len(series)]
    back = _ctx()
    with caplog.at_level(logging.WARNING):
        CoverlessTransform().restore([series[i] for i in part], [records[i] for i in part], back)
    assert back.identity == {} and "39 of the series' 40 instances present" in caplog.text


def test_settings_are_checked() -> None:
    for bad in ({"ordering": "alphabetical"}, {"fallback": "drop"}, {"workers": -1}, {"fallbak": "refuse"}):
        with pytest.raises(PluginError):
            CoverlessTransform(**bad)  # type: ignore[arg-type]


def test_gateway_refuses_when_a_carried_identity_contradicts_the_header(tmp_path: Path, keyring: Keyring,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The spine's cross-check: a transform that hands back a different identity than the
    restored header holds makes the whole series fail (a small fake stage stands in)."""
    small = synthetic.ct_series(3, 32)
    protected = _protect(small, keyring)

    class Liar:
        def restore(self, series: list, records: list, ctx: Context) -> None:  # type: ignore[type-arg]
            ctx.identity["PatientName"] = "ROE^RICHARD"

    class Honest:
        def restore(self, series: list, records: list, ctx: Context) -> None:  # type: ignore[type-arg]
            ctx.identity["PatientName"] = IDENTITY.patient_name

    monkeypatch.setattr("gateway.restore.stage_by_name", lambda name: Liar())
    assert all(o.data is None and "does not match the restored header" in (o.error or "")
               for o in restore_series(protected, keyring))
    monkeypatch.setattr("gateway.restore.stage_by_name", lambda name: Honest())
    assert [o.data for o in restore_series(protected, keyring)] == [encode(ds) for ds in small]
