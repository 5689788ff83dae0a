"""Curated hours: files, bytes and a DuckDB query, raw JSONL against curated JSONL.gz and Parquet.

    python -m bench.bench_curated     # 1,000,000 readings, 4 hours, 1,000 vehicles, 20 files

One raw lake (bench.common.write_lake: 1% of lines stored twice). Timed: the aggregation of
every hour as `telemetry aggregate --jobs N` runs it, then the curation of every hour in each
format (what the same command adds once the hours have closed, hours in parallel over the
same N processes). Then, over each
of raw JSONL, curated JSONL.gz and curated Parquet: the number of files, their bytes, and a
DuckDB per-vehicle-hour query (count, first and last ts, count/min/max/avg of one signal), the
median of `--runs`; raw needs `DISTINCT ON` to drop its copies, the curated hours do not. The
three answers are checked equal. The same query without the signal (count, first and last
ts) is timed too: it shows what reading the signal costs in each layout.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.fakes import FakeClock

from bench.common import (
    LAKE_START,
    base_parser,
    emit,
    lake_storage,
    median,
    scratch_dir,
    write_lake,
)
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.curation import STATE, CuratedFormat, CurateHours, JsonLinesGzip
from telemetry.entrypoints import aggregate_jobs, curate_jobs

SIGNAL = "Vehicle.Speed"


def _source(kind: str, path: Path) -> str:
    if kind == "raw":
        return f"""(SELECT DISTINCT ON (vehicle_id, reading_id) * FROM read_json(
            '{path}/**/*.jsonl', format = 'newline_delimited',
            columns = {{reading_id: 'VARCHAR', vehicle_id: 'VARCHAR', ts: 'TIMESTAMPTZ',
                        signals: 'STRUCT("{SIGNAL}" DOUBLE)'}}))"""
    if kind == "jsonl":
        return f"""read_json('{path}/**/*.jsonl.gz', format = 'newline_delimited',
            columns = {{reading_id: 'VARCHAR', vehicle_id: 'VARCHAR', ts: 'TIMESTAMPTZ',
                        signals: 'STRUCT("{SIGNAL}" DOUBLE)'}})"""
    return f"read_parquet('{path}/**/*.parquet')"


def query(kind: str, path: Path, *, signal: bool = True) -> str:
    value = f"signals['{SIGNAL}']" if kind == "parquet" else f'signals."{SIGNAL}"'
    stats = f", count({value}), min({value}), max({value}), avg({value})" if signal else ""
    return f"""
        SELECT epoch(date_trunc('hour', ts))::BIGINT AS h, vehicle_id, count(*),
               epoch_us(min(ts)), epoch_us(max(ts)){stats}
        FROM {_source(kind, path)} GROUP BY ALL ORDER BY h, vehicle_id"""


def run_query(
    kind: str, path: Path, runs: int, *, signal: bool = True
) -> tuple[float, list[Any]]:
    import duckdb

    times = []
    rows: list[Any] = []
    for _ in range(runs):
        con = duckdb.connect()  # a fresh connection: no cache of the previous run
        con.execute("SET TimeZone = 'UTC'")
        t = time.perf_counter()
        rows = con.execute(query(kind, path, signal=signal)).fetchall()
        times.append(time.perf_counter() - t)
        con.close()
    return median(times), rows


def footprint(path: Path, suffix: str) -> tuple[int, int]:
    files = [p for p in path.rglob(f"*{suffix}") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x[:8] != y[:8] or abs(x[8] - y[8]) > 1e-9 * max(1.0, abs(x[8])):
            return False
    return True


def curate(root: Path, fmt: CuratedFormat, part_bytes: int, jobs: int) -> tuple[float, int]:
    """What `telemetry aggregate --jobs N` adds once the hours have closed."""
    clock = FakeClock(LAKE_START + timedelta(days=2))

    def make() -> CurateHours:
        return CurateHours(lake_storage(root), clock, fmt, part_bytes=part_bytes)

    t = time.perf_counter()
    service = make()
    done = service.changed(AggregateHours(service.storage).raw_hours(),
                           curate_jobs.runner(make, jobs))
    return time.perf_counter() - t, sum(r.readings for r in done)


def measure(root: Path, lines: int, args: Any) -> dict[str, Any]:
    from telemetry.adapters.parquet import ParquetFormat

    def make_service() -> AggregateHours:
        return AggregateHours(lake_storage(root))

    t = time.perf_counter()
    service = make_service()
    readings = sum(r.readings for r in service.changed(aggregate_jobs.runner(make_service,
                                                                             args.jobs)))
    aggregate_s = time.perf_counter() - t
    out: dict[str, Any] = {"raw_lines": lines, "readings": readings, "jobs": args.jobs,
                           "aggregate_s": round(aggregate_s, 2)}
    places = {"raw": (root / "raw", ".jsonl")}
    for name, fmt in (("jsonl", JsonLinesGzip()), ("parquet", ParquetFormat())):
        seconds, n = curate(root, fmt, args.part_bytes, args.jobs)
        assert n == readings, (name, n, readings)
        moved = root / f"curated-{name}"
        (root / "curated").rename(moved)
        (root / STATE).unlink()
        places[name] = (moved, "." + fmt.extension)
        out[f"curate_{name}_s"] = round(seconds, 2)
        out[f"curate_{name}_adds"] = f"{seconds / aggregate_s:.0%}"
    answers = {}
    for kind, (path, suffix) in places.items():
        files, size = footprint(path, suffix)
        seconds, rows = run_query(kind, path, args.runs)
        answers[kind] = rows
        out[f"{kind}_files"] = files
        out[f"{kind}_bytes"] = size
        out[f"{kind}_query_s"] = round(seconds, 3)
        seconds, _ = run_query(kind, path, args.runs, signal=False)
        out[f"{kind}_count_query_s"] = round(seconds, 3)
    for kind in ("jsonl", "parquet"):
        out[f"{kind}_smaller_than_raw"] = round(out["raw_bytes"] / out[f"{kind}_bytes"], 1)
        out[f"{kind}_query_faster_than_raw"] = round(
            out["raw_query_s"] / max(out[f"{kind}_query_s"], 1e-6), 1)
        out[f"{kind}_count_query_faster_than_raw"] = round(
            out["raw_count_query_s"] / max(out[f"{kind}_count_query_s"], 1e-6), 1)
    out["results_equal"] = same(answers["raw"], answers["jsonl"]) and same(
        answers["raw"], answers["parquet"])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--hours", type=int, default=4)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--part-bytes", type=int, default=128 * 1024 * 1024)
    ap.add_argument("--jobs", type=int, default=aggregate_jobs.default_jobs(),
                    help="processes for the aggregation (`telemetry aggregate`'s default)")
    ap.add_argument("--dir", help="where to build the lake (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the lake afterwards")
    args = ap.parse_args(argv)
    if args.tiny:
        args.readings, args.hours, args.vehicles, args.files, args.runs = 2000, 2, 10, 4, 1
    root = scratch_dir(args.dir, "bench-curated-")
    try:
        lines = write_lake(root, readings=args.readings, hours=args.hours,
                           vehicles=args.vehicles, files=args.files)
        result = measure(root, lines, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit("curated", result, args.json)
    return result


if __name__ == "__main__":
    main()
