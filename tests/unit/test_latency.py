"""The latency distribution behind p50/p95/p99/max (contract section 7)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.domain.latency import LatencyDistribution

# Latencies from 1 ms to about 11 days: the range the buckets are 1 % wide in.
latencies = st.floats(min_value=1.0, max_value=1e9, allow_nan=False)
QUANTILES = (50, 95, 99)
REL = 0.01 * (1 + 1e-9)  # 1 %, and a hair for the float rounding of the bucket edges


def exact_percentile(values: list[float], q: int) -> float:
    """Nearest rank: the smallest value with at least q % of all values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-q * len(ordered) // 100))  # ceil(q * n / 100) in integers
    return ordered[rank - 1]


def dist(values: list[float]) -> LatencyDistribution:
    d = LatencyDistribution()
    d.add_many(values)
    return d


def test_an_empty_distribution_reports_zeros() -> None:
    d = LatencyDistribution()
    assert d.percentile(50) == 0.0
    assert d.summary() == {"count": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}


def test_a_known_distribution() -> None:
    d = dist([float(v) for v in range(1, 101)])  # 1..100 ms
    assert d.count == 100
    assert d.max_ms == 100.0
    for q in QUANTILES:
        assert q <= d.percentile(q) <= q * 1.01
    assert d.percentile(100) == 100.0
    summary = d.summary()
    assert summary["count"] == 100
    assert summary["max_ms"] == 100.0
    assert 50 <= summary["p50_ms"] <= 50.5


def test_a_percentile_never_exceeds_the_max() -> None:
    d = dist([123.456])
    for q in (1, 50, 99, 100):
        assert d.percentile(q) == 123.456


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=300))
def test_percentiles_are_within_one_percent_and_max_is_exact(values: list[float]) -> None:
    d = dist(values)
    assert d.count == len(values)
    assert d.max_ms == max(values)
    for q in QUANTILES:
        exact = exact_percentile(values, q)
        got = d.percentile(q)
        assert math.isclose(got, exact, rel_tol=REL), (q, got, exact)
        assert got <= max(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1))
def test_values_under_one_ms_share_the_first_bucket(values: list[float]) -> None:
    """Below 1 ms the resolution is 1 ms (documented): reported at most 1 ms, and the max exact."""
    d = dist(values)
    assert d.max_ms == max(values)
    for q in QUANTILES:
        assert exact_percentile(values, q) <= d.percentile(q) <= 1.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(latencies | st.floats(-1e3, 1.0), max_size=40), max_size=6))
def test_merge_equals_adding_all_values_to_one(groups: list[list[float]]) -> None:
    merged = LatencyDistribution()
    for g in groups:
        merged = merged.merge(dist(g))
    one = dist([v for g in groups for v in g])
    assert merged == one
    assert merged.summary() == one.summary()
    # merging leaves its inputs alone
    if groups:
        first = dist(groups[0])
        snapshot = LatencyDistribution(
            dict(first.counts), first.count, first.max_ms, first.negative
        )
        first.merge(dist([5.0, 6.0]))
        assert first == snapshot


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=50))
def test_negative_values_count_as_zero(values: list[float]) -> None:
    d = dist(values)
    assert d.negative == sum(1 for v in values if v < 0)
    clamped = dist([max(v, 0.0) for v in values])
    assert d.counts == clamped.counts
    assert d.count == clamped.count == len(values)
    assert d.max_ms == max([0.0, *values])


def near_edges(k: int) -> list[float]:
    """Bucket edges around 1.01**k, their float neighbours and the middles between them:
    where the rounding of log() puts a value in the bucket above or below its edge."""
    out: list[float] = []
    for edge in (1.01 ** (k - 1), 1.01**k, 1.01 ** (k + 1)):
        out += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf), edge * 1.005]
    return out


edge_clusters = st.integers(1, 3000).flatmap(
    lambda k: st.lists(st.sampled_from(near_edges(k)), min_size=1, max_size=30)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies | st.floats(-1e3, 2.0), max_size=100), edge_clusters)
def test_add_many_puts_each_value_where_add_would(values: list[float], edges: list[float]) -> None:
    values = values + edges
    one_by_one = LatencyDistribution()
    for v in values:
        one_by_one.add(v)
    assert dist(values) == one_by_one


def test_add_with_weight_equals_adding_repeatedly() -> None:
    weighted = LatencyDistribution()
    weighted.add(12.5, weight=3)
    weighted.add(-4.0, weight=2)
    weighted.add(99.0, weight=0)  # nothing
    repeated = dist([12.5, 12.5, 12.5, -4.0, -4.0])
    assert weighted == repeated
    assert weighted.negative == 2
    assert weighted.max_ms == 12.5
