"""Each benchmark's main function runs once at its tiny size: a smoke test, no timing claims."""

from __future__ import annotations

import pytest
from bench import bench_aggregate, bench_cost, bench_e2e, bench_ingest, bench_worker

pytestmark = pytest.mark.slow


def test_worker_bench_runs() -> None:
    assert bench_worker.main(["--tiny", "--json"])["readings"] == 1000


def test_worker_bench_on_the_memory_queue_runs() -> None:
    assert bench_worker.main(["--tiny", "--json", "--queue", "memory"])["readings"] == 1000


def test_aggregate_bench_runs_and_agrees_with_duckdb() -> None:
    pytest.importorskip("duckdb")
    assert bench_aggregate.main(["--tiny", "--json"])["results_equal"]


def test_ingest_bench_runs_both_servers() -> None:
    pytest.importorskip("fastapi")
    r = bench_ingest.main(["--tiny", "--json"])
    assert r["ours_readings_per_s_median"] > 0
    assert r["peer_readings_per_s_median"] > 0
    assert r["ours_non_202"] == r["peer_non_202"] == 0


def test_cost_bench_runs() -> None:
    pytest.importorskip("moto")
    r = bench_cost.main(["--tiny", "--json"])
    assert r["s3_puts_per_million"] > 0


def test_e2e_bench_runs() -> None:
    r = bench_e2e.main(["--tiny", "--json"])
    assert r["readings_stored"] > 0
