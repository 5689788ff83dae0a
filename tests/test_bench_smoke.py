"""Each benchmark's main function runs once at its tiny size: a smoke test, no timing claims."""

from __future__ import annotations

import os
import shutil

import pytest
from bench import (
    bench_aggregate,
    bench_cost,
    bench_curated,
    bench_e2e,
    bench_ingest,
    bench_worker,
    ingest_budget,
    ingest_floor,
)

pytestmark = pytest.mark.slow


def test_worker_bench_runs() -> None:
    assert bench_worker.main(["--tiny", "--json"])["readings"] == 1000


def test_worker_bench_with_one_vehicle_per_request_runs() -> None:
    r = bench_worker.main(["--tiny", "--json", "--queue", "memory", "--one-vehicle"])
    assert r["readings"] == 1000 and r["one_vehicle_per_request"]


def test_worker_bench_on_the_memory_queue_runs() -> None:
    assert bench_worker.main(["--tiny", "--json", "--queue", "memory"])["readings"] == 1000


def test_aggregate_bench_runs_and_agrees_with_duckdb() -> None:
    pytest.importorskip("duckdb")
    r = bench_aggregate.main(["--tiny", "--json"])
    assert r["lines"]["results_equal"] and r["ingest"]["results_equal"]
    assert r["ingest"]["readings"] == r["lines"]["readings"] == 2000


def test_curated_bench_runs_and_the_three_lakes_agree() -> None:
    pytest.importorskip("duckdb")
    r = bench_curated.main(["--tiny", "--json", "--part-bytes", "40000"])
    assert r["results_equal"] and r["readings"] == 2000
    assert r["parquet_files"] > 2 and r["jsonl_files"] >= 2


def test_ingest_bench_runs_both_servers() -> None:
    pytest.importorskip("fastapi")
    r = bench_ingest.main(["--tiny", "--json"])
    assert r["ours_readings_per_s_median"] > 0
    assert r["peer_readings_per_s_median"] > 0
    assert r["ours_non_202"] == r["peer_non_202"] == 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_ingest_bench_runs_with_wrk_and_counts_its_answers() -> None:
    r = bench_ingest.main(["--tiny", "--json", "--only", "ours", "--load", "wrk"])
    assert r["ours_readings_per_s_median"] > 0 and r["ours_non_202"] == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_ingest_bench_pins_the_server_and_the_load_apart() -> None:
    before = os.sched_getaffinity(0)
    r = bench_ingest.main(["--tiny", "--json", "--only", "ours", "--pin"])
    assert r["pinned"] and r["ours_readings_per_s_median"] > 0 and r["ours_non_202"] == 0
    assert os.sched_getaffinity(0) == before  # the bench's own process is given back


def test_ingest_floor_bench_runs() -> None:
    r = ingest_floor.main(["--tiny", "--json"])
    assert 0 < r["domain_decode_us_cpu_per_request"] < r["domain_whole_us_cpu_per_request"]
    assert r["bare_stack_requests_per_s"] > 0


def test_ingest_budget_bench_runs_and_its_parts_add_up() -> None:
    r = ingest_budget.main(["--tiny", "--json", "--load", "python"])
    for size in r["us_per_request"]:
        assert size["decode"] > 0 and size["prepare"] > 0 and size["server"] > 0
        parts = sum(v for k, v in size.items() if k not in (
            "app", "app without the send", "server", "server readings/s")
            and not k.startswith("prepare: "))
        assert parts == pytest.approx(size["server"], abs=1.0)


def test_cost_bench_runs() -> None:
    pytest.importorskip("moto")
    r = bench_cost.main(["--tiny", "--json"])
    assert r["s3_puts_per_million"] > 0


def test_cost_bench_counts_the_puts_of_partials() -> None:
    pytest.importorskip("moto")
    plain = bench_cost.main(["--tiny", "--json"])
    r = bench_cost.main(["--tiny", "--json", "--one-vehicle"])
    assert r["s3_calls_by_op"]["PutObject"] > r["files"] == plain["files"]


def test_e2e_bench_runs() -> None:
    r = bench_e2e.main(["--tiny", "--json"])
    assert r["readings_stored"] > 0
