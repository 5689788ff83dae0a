"""Hourly per-vehicle statistics (contract section 5) as a mergeable value."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from telemetry.domain.aggregation import (
    HourAggregate,
    aggregate,
    decode_aggregate_lines,
    dedupe,
)
from telemetry.domain.readings import Record, encode_record
from tests.strategies import HOUR, VALUE_POOLS, distinct_records, records

RECEIVED = HOUR + timedelta(hours=1)


def rec(
    rid: str,
    minute: float,
    signals: dict[str, Any],
    vid: str = "truck-1",
    received: datetime = RECEIVED,
) -> Record:
    return Record(rid, vid, HOUR + timedelta(minutes=minute), received, signals)


def lines(agg: HourAggregate) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in agg.encode().split(b"\n") if line]


# ---------------------------------------------------------------- examples


def test_one_line_per_vehicle_with_the_documented_fields() -> None:
    agg = aggregate(
        HOUR,
        [
            rec("a", 10, {"Vehicle.Speed": 10.0, "Vehicle.Gear": 2}),
            rec("b", 5, {"Vehicle.Speed": 20.0, "Vehicle.Gear": 4}),
            rec("c", 50, {"Vehicle.Speed": 60}),
            rec("d", 30, {"Vehicle.Speed": 1.5}, vid="van-2"),
        ],
    )
    truck, van = lines(agg)
    assert truck == {
        "hour_start": "2026-11-29T01:00:00Z",
        "vehicle_id": "truck-1",
        "readings": 3,
        "first_ts": "2026-11-29T01:05:00Z",
        "last_ts": "2026-11-29T01:50:00Z",
        "signals": {
            "Vehicle.Gear": {"count": 2, "min": 2, "max": 4, "mean": 3.0},
            "Vehicle.Speed": {"count": 3, "min": 10.0, "max": 60, "mean": 30.0},
        },
    }
    assert van["vehicle_id"] == "van-2"
    assert van["readings"] == 1
    assert van["first_ts"] == van["last_ts"] == "2026-11-29T01:30:00Z"
    assert agg.readings == 4
    assert decode_aggregate_lines(agg.encode())[0].vehicle_id == "truck-1"


def test_bools_and_strings_are_not_numeric_statistics() -> None:
    agg = aggregate(
        HOUR,
        [
            rec("a", 1, {"On": True, "Mode": "eco", "Mixed": 1, "Num": "5"}),
            rec("b", 2, {"On": False, "Mode": "sport", "Mixed": True, "Num": 7}),
        ],
    )
    (line,) = lines(agg)
    assert line["readings"] == 2  # still counted as readings
    assert line["signals"] == {
        "Mixed": {"count": 1, "min": 1, "max": 1, "mean": 1.0},  # the True does not count
        "Num": {"count": 1, "min": 7, "max": 7, "mean": 7.0},  # the "5" does not count
    }


def test_a_vehicle_without_numeric_signals_still_has_a_line() -> None:
    (line,) = lines(aggregate(HOUR, [rec("a", 1, {"Door": "open"})]))
    assert line["readings"] == 1
    assert line["signals"] == {}


def test_ints_and_floats_are_statistics_and_keep_their_type() -> None:
    (line,) = lines(aggregate(HOUR, [rec("a", 1, {"x": 3}), rec("b", 2, {"x": -1.25})]))
    assert line["signals"]["x"] == {"count": 2, "min": -1.25, "max": 3, "mean": 0.875}
    assert type(line["signals"]["x"]["max"]) is int


def test_first_and_last_ts_whatever_the_order() -> None:
    rs = [rec(str(i), m, {"x": 1}) for i, m in enumerate([30, 10, 59.99, 0, 45])]
    for order in (rs, rs[::-1], sorted(rs, key=lambda r: r.reading_id)):
        vh = aggregate(HOUR, order).vehicles["truck-1"]
        assert vh.first_ts == HOUR
        assert vh.last_ts == HOUR + timedelta(minutes=59.99)


def test_the_mean_is_exact_where_naive_summation_is_not() -> None:
    values = [1e16, 1.0, -1e16, 1.0] * 3
    rs = [rec(str(i), i, {"x": v}) for i, v in enumerate(values)]
    assert sum(values) != 6.0  # the naive sum loses the ones
    assert aggregate(HOUR, rs).vehicles["truck-1"].signals["x"].mean == 0.5


def test_merging_aggregates_of_different_hours_is_refused() -> None:
    with pytest.raises(ValueError):
        aggregate(HOUR, []).merge(aggregate(HOUR + timedelta(hours=1), []))


def test_an_empty_hour_encodes_to_nothing() -> None:
    assert aggregate(HOUR, []).encode() == b""


def test_equal_numbers_of_another_spelling_do_not_depend_on_order() -> None:
    """1 and 1.0 (and 0.0 and -0.0) are equal: min and max must not pick by arrival order."""
    for a, b in [(1, 1.0), (0.0, -0.0), (0, -0.0)]:
        one = aggregate(HOUR, [rec("p", 1, {"x": a}), rec("q", 2, {"x": b})])
        other = aggregate(HOUR, [rec("q", 2, {"x": b}), rec("p", 1, {"x": a})])
        assert one.encode() == other.encode()
        split = aggregate(HOUR, [rec("q", 2, {"x": b})]).merge(
            aggregate(HOUR, [rec("p", 1, {"x": a})])
        )
        assert split.encode() == one.encode()


def test_huge_values_merge_and_their_mean_is_finite() -> None:
    big = 1.7976931348623157e308
    rs = [rec("a", 1, {"x": big}), rec("b", 2, {"x": big}), rec("c", 3, {"x": -big})]
    whole = aggregate(HOUR, rs)
    parts = aggregate(HOUR, rs[:1]).merge(aggregate(HOUR, rs[1:2])).merge(aggregate(HOUR, rs[2:]))
    assert parts.encode() == whole.encode()
    assert whole.vehicles["truck-1"].signals["x"].mean == pytest.approx(big / 3)
    twice = aggregate(HOUR, rs[:2]).vehicles["truck-1"].signals["x"]
    assert twice.mean == big  # not Infinity, and never null in the file
    assert b"null" not in whole.encode()


def test_dedupe_keeps_one_copy_the_one_received_first() -> None:
    early = rec("a", 1, {"x": 1.0}, received=RECEIVED)
    late = rec("a", 1, {"x": 2.0}, received=RECEIVED + timedelta(seconds=1))
    other = rec("b", 2, {"x": 5.0})
    for order in ([early, late, other, early], [late, other, early], [other, late, early]):
        kept = dedupe(order)
        assert sorted(r.reading_id for r in kept) == ["a", "b"]
        assert next(r for r in kept if r.reading_id == "a") == early


def test_dedupe_ties_go_to_the_smaller_encoding() -> None:
    one = rec("a", 1, {"x": 1})
    one_float = rec("a", 1, {"x": 1.0})  # equal as Python values, different in the file
    flag = rec("a", 1, {"x": True})
    expected = min([one, one_float, flag], key=encode_record)
    for order in ([one, one_float, flag], [flag, one_float, one], [one_float, flag, one]):
        (kept,) = dedupe(order)
        assert encode_record(kept) == encode_record(expected)


# ---------------------------------------------------------------- properties


DISTINCT = st.one_of(
    distinct_records(),
    *(distinct_records(values=st.sampled_from(pool)) for pool in VALUE_POOLS.values()),
)
WITH_FEW_IDS = records(reading_id=st.sampled_from([f"r{i}" for i in range(8)]))


@st.composite
def splits(draw: st.DrawFn) -> tuple[list[Record], list[list[Record]]]:
    """Distinct records, and the same records split into chunks, in a random order."""
    rs = draw(DISTINCT)
    shuffled = draw(st.permutations(rs))
    cuts = sorted(draw(st.lists(st.integers(0, len(rs)), max_size=5)))
    bounds = [0, *cuts, len(rs)]
    chunks = [shuffled[a:b] for a, b in itertools.pairwise(bounds)]
    return rs, draw(st.permutations(chunks))


def fold(partials: list[HourAggregate]) -> HourAggregate:
    merged = partials[0]
    for p in partials[1:]:
        merged = merged.merge(p)
    return merged


def tree(partials: list[HourAggregate]) -> HourAggregate:
    """Merge pairwise, like workers combining their results."""
    while len(partials) > 1:
        pairs = range(0, len(partials) - 1, 2)
        rest = partials[len(partials) // 2 * 2 :]
        partials = [partials[i].merge(partials[i + 1]) for i in pairs] + rest
    return partials[0]


@settings(max_examples=70, deadline=None)
@given(splits())
def test_merging_partials_in_any_order_equals_one_pass(
    case: tuple[list[Record], list[list[Record]]],
) -> None:
    rs, chunks = case
    whole = aggregate(HOUR, rs).encode()
    partials = [aggregate(HOUR, c) for c in chunks]
    assert fold(partials).encode() == whole  # bit-identical means and all
    assert fold(partials[::-1]).encode() == whole
    assert tree(partials).encode() == whole
    assert fold(partials).readings == len(rs)
    assert aggregate(HOUR, rs[::-1]).encode() == whole


@settings(max_examples=40, deadline=None)
@given(DISTINCT)
def test_statistics_are_right(rs: list[Record]) -> None:
    agg = aggregate(HOUR, rs)
    for vid, vh in agg.vehicles.items():
        mine = [r for r in rs if r.vehicle_id == vid]
        assert vh.readings == len(mine)
        assert vh.first_ts == min(r.ts for r in mine)
        assert vh.last_ts == max(r.ts for r in mine)
        numeric: dict[str, list[int | float]] = {}
        for r in mine:
            for name, v in r.signals.items():
                if type(v) in (int, float):
                    numeric.setdefault(name, []).append(v)
        assert set(vh.signals) == set(numeric)
        for name, values in numeric.items():
            stats = vh.signals[name]
            assert stats.count == len(values)
            assert stats.min == min(values)
            assert stats.max == max(values)
            exact = sum(Fraction(float(v)) for v in values) / len(values)
            assert math.isfinite(stats.mean)
            assert stats.mean == pytest.approx(float(exact), rel=1e-15, abs=1e-300)
    assert sorted(agg.vehicles) == sorted({r.vehicle_id for r in rs})


# Equal in Python, different in the file.
SPELLINGS = [(1, 1.0), (1.0, True), (1, True), (0.0, -0.0), (0, -0.0), (0, False)]


@st.composite
def with_duplicates(draw: st.DrawFn) -> list[Record]:
    """Records where an identity (vehicle_id, reading_id) comes back: the same copy, a
    differing one received at another time, or copies that differ only in spelling,
    received at the same instant."""
    rs = draw(st.lists(WITH_FEW_IDS, min_size=1, max_size=20))
    copies = draw(st.lists(st.sampled_from(rs), max_size=6))
    respelled: list[Record] = []
    for r, (a, b) in draw(st.lists(st.tuples(st.sampled_from(rs), st.sampled_from(SPELLINGS)))):
        name = min(r.signals)
        respelled += [replace(r, signals={**r.signals, name: v}) for v in (a, b)]
    return rs + copies + respelled[:8]


@settings(max_examples=50, deadline=None)
@given(with_duplicates(), st.randoms(use_true_random=False))
def test_duplicates_never_count_twice_and_order_does_not_matter(rs: list[Record], rnd: Any) -> None:
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    kept = dedupe(rs)
    ids = {(r.vehicle_id, r.reading_id) for r in rs}
    assert sorted((r.vehicle_id, r.reading_id) for r in kept) == sorted(ids)
    assert sorted(map(encode_record, kept)) == sorted(map(encode_record, dedupe(shuffled)))
    agg = aggregate(HOUR, kept)
    assert agg.readings == len(ids)
    assert agg.encode() == aggregate(HOUR, dedupe(shuffled)).encode()
    # and deduping the union of already-deduped parts changes nothing
    half = len(shuffled) // 2
    again = dedupe(dedupe(shuffled[:half]) + dedupe(shuffled[half:]))
    assert aggregate(HOUR, again).encode() == agg.encode()


def test_the_hour_is_written_in_utc() -> None:
    local = HOUR.astimezone(timezone(timedelta(hours=5)))
    (line,) = lines(aggregate(local, [rec("a", 1, {"x": 1})]))
    assert line["hour_start"] == "2026-11-29T01:00:00Z"
    assert HOUR.tzinfo == UTC
