"""The soak benchmark at its tiny size: workers killed mid-load, and still nothing lost."""

from __future__ import annotations

import pytest
from bench import bench_soak

pytestmark = pytest.mark.slow


def test_soak_bench_loses_nothing_and_counts_each_reading_once() -> None:
    r = bench_soak.main(["--tiny", "--json"])
    assert r["accepted_distinct"] > 0
    assert r["queue_drained"]
    assert r["lost"] == 0, r
    assert r["unexpected"] == 0, r
    assert r["counted_in_aggregates"] == r["accepted_distinct"], r
    assert r["kills_sigkill"] + r["kills_sigterm"] > 0, r
    assert r["ok"]
