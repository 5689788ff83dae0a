"""Aggregation: readings/s over a raw lake, ours side by side with DuckDB on the same files.

    python -m bench.bench_aggregate     # 1,000,000 readings, 4 hours, 1,000 vehicles, 20 files

Two lakes of that shape, one after the other (`--lake`): `lines`, written straight to files
with 1% of single lines stored twice, and `ingest`, made through ingest's and the worker's use
cases from requests of 100 readings of one vehicle, 1% of requests sent twice. On `ingest`,
ours merges the partials that came with the envelopes; DuckDB reads the same raw files.

Ours is what `telemetry aggregate` does for every hour (read, decode, dedupe, aggregate, write
the aggregate file), in one process and with its default `--jobs` (one process per usable CPU:
hours in parallel, or an hour's files split over them). DuckDB runs
the same per vehicle-hour statistics over the same files with all cores. Both results are
checked equal: counts and min/max exact, means to 1e-9 relative.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    LAKE_START,
    NUMERIC,
    base_parser,
    emit,
    lake_storage,
    median,
    scratch_dir,
    write_ingested_lake,
    write_lake,
)
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import decode_aggregate_lines
from telemetry.domain.lake import aggregate_key
from telemetry.entrypoints import aggregate_jobs

Key = tuple[int, str]  # (hour epoch s, vehicle id)


def cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its ended children: a figure that
    holds on a shared machine, where wall time depends on the neighbours."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(root: Path, hours: list[datetime], jobs: int) -> tuple[float, int]:
    """What `telemetry aggregate --jobs N` does with these hours to do."""
    def make_service() -> AggregateHours:
        return AggregateHours(lake_storage(root))

    t = time.perf_counter()
    service = make_service()
    todo = [(h, service.hour_keys(h)) for h in hours]
    n = sum(r.readings for r in aggregate_jobs.run(make_service, todo, jobs))
    return time.perf_counter() - t, n


def read_ours(root: Path, hours: list[datetime]) -> dict[Key, dict[str, Any]]:
    storage = lake_storage(root)
    out: dict[Key, dict[str, Any]] = {}
    for h in hours:
        for line in decode_aggregate_lines(storage.get(aggregate_key(h))):
            out[int(line.hour_start.timestamp()), line.vehicle_id] = {
                "readings": line.readings,
                "first_us": _us(line.first_ts),
                "last_us": _us(line.last_ts),
                "signals": line.signals,
            }
    return out


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=t.tzinfo)) // timedelta(microseconds=1)


def duckdb_sql(root: Path) -> str:
    struct = ", ".join(f'"{n}" DOUBLE' for n in NUMERIC) + ', "Vehicle.IsMoving" BOOLEAN'
    stats = ",\n".join(
        f'count(s."{n}"), min(s."{n}"), max(s."{n}"), avg(s."{n}")' for n in NUMERIC
    )
    # DISTINCT ON keeps one copy per identity, (vehicle_id, reading_id) (the lake's copies
    # are identical), so a duplicate never counts twice, as in ours.
    return f"""
        WITH raw AS (
            SELECT DISTINCT ON (vehicle_id, reading_id) reading_id, vehicle_id, ts, signals AS s
            FROM read_json('{root}/raw/**/*.jsonl', format = 'newline_delimited',
                columns = {{reading_id: 'VARCHAR', vehicle_id: 'VARCHAR',
                            ts: 'TIMESTAMPTZ', received_at: 'TIMESTAMPTZ',
                            signals: 'STRUCT({struct})'}})
        )
        SELECT epoch(date_trunc('hour', ts))::BIGINT, vehicle_id, count(*),
               epoch_us(min(ts)), epoch_us(max(ts)),
               {stats}
        FROM raw GROUP BY ALL
    """


def run_duckdb(root: Path, threads: int) -> tuple[float, dict[Key, dict[str, Any]]]:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    t = time.perf_counter()
    rows = con.execute(duckdb_sql(root)).fetchall()
    elapsed = time.perf_counter() - t
    out: dict[Key, dict[str, Any]] = {}
    for row in rows:
        sig = {}
        for i, name in enumerate(NUMERIC):
            count, lo, hi, mean = row[5 + 4 * i : 9 + 4 * i]
            if count:
                sig[name] = {"count": count, "min": lo, "max": hi, "mean": mean}
        out[int(row[0]), row[1]] = {
            "readings": row[2],
            "first_us": row[3],
            "last_us": row[4],
            "signals": sig,
        }
    return elapsed, out


def compare(ours: dict[Key, dict[str, Any]], theirs: dict[Key, dict[str, Any]]) -> list[str]:
    """Differences, at most a few; empty when the results agree."""
    diffs: list[str] = []
    if ours.keys() != theirs.keys():
        diffs.append(f"vehicle-hours differ: {len(ours)} vs {len(theirs)}")
    for key in sorted(ours.keys() & theirs.keys()):
        a, b = ours[key], theirs[key]
        for f in ("readings", "first_us", "last_us"):
            if a[f] != b[f]:
                diffs.append(f"{key} {f}: {a[f]} vs {b[f]}")
        if a["signals"].keys() != b["signals"].keys():
            diffs.append(f"{key} signals: {sorted(a['signals'])} vs {sorted(b['signals'])}")
            continue
        for name, sa in a["signals"].items():
            sb = b["signals"][name]
            if (sa["count"], sa["min"], sa["max"]) != (sb["count"], sb["min"], sb["max"]):
                diffs.append(f"{key} {name}: {sa} vs {sb}")
            elif not math.isclose(sa["mean"], sb["mean"], rel_tol=1e-9):
                diffs.append(f"{key} {name} mean: {sa['mean']!r} vs {sb['mean']!r}")
        if len(diffs) > 5:
            break
    return diffs


LAKES = {
    # Lines written straight to files, 1% of single lines stored twice: every hour decoded.
    "lines": write_lake,
    # Through ingest and the worker, each vehicle posting its own readings, 1% of requests
    # sent twice: partials cover the files (see telemetry.domain.partials).
    "ingest": write_ingested_lake,
}


def measure(root: Path, lines: int, built: float, args: Any) -> dict[str, Any]:
    hours = [LAKE_START + timedelta(hours=h) for h in range(args.hours)]
    one: list[float] = []
    pooled: list[float] = []
    duck: list[float] = []
    readings = 0
    theirs: dict[Key, dict[str, Any]] = {}
    cpu = {"duckdb": 0.0, "ours_1proc": 0.0, "ours_pooled": 0.0}
    for _ in range(args.runs):
        c = cpu_s()
        elapsed, theirs = run_duckdb(root, os.cpu_count() or 1)
        duck.append(elapsed)
        cpu["duckdb"] += -c + (c := cpu_s())
        elapsed, readings = run_ours(root, hours, 1)
        one.append(elapsed)
        cpu["ours_1proc"] += -c + (c := cpu_s())
        elapsed, _ = run_ours(root, hours, args.jobs)
        pooled.append(elapsed)
        cpu["ours_pooled"] += -c + (c := cpu_s())
    diffs = compare(read_ours(root, hours), theirs)
    if diffs:
        raise SystemExit("results differ from DuckDB:\n" + "\n".join(diffs))
    return {
        "readings": readings,
        "raw_lines": lines,
        "raw_files": len(list(root.glob("raw/**/*.jsonl"))),
        "lake_build_s": round(built, 2),
        "runs": args.runs,
        "ours_1proc_readings_per_s": readings / median(one),
        f"ours_{args.jobs}proc_readings_per_s": readings / median(pooled),
        "duckdb_readings_per_s": readings / median(duck),
        "ratio_1proc_vs_duckdb": round(median(duck) / median(one), 3),
        f"ratio_{args.jobs}proc_vs_duckdb": round(median(duck) / median(pooled), 3),
        **{f"cpu_us_per_reading_{k}": round(v / args.runs / readings * 1e6, 2)
           for k, v in cpu.items()},
        "results_equal": True,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--hours", type=int, default=4)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--lake", choices=[*LAKES, "both"], default="both",
                    help="how the lake is made (default: both, one after the other)")
    ap.add_argument("--jobs", type=int, default=aggregate_jobs.default_jobs(),
                    help="processes for the pooled run (`telemetry aggregate`'s default: "
                    "the usable CPUs)")
    ap.add_argument("--dir", help="where to build the lake (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the lake afterwards")
    args = ap.parse_args(argv)
    if args.tiny:
        args.readings, args.hours, args.vehicles, args.files, args.runs = 2000, 2, 10, 4, 1
    result: dict[str, Any] = {}
    for name in LAKES if args.lake == "both" else [args.lake]:
        root = scratch_dir(args.dir and f"{args.dir}/{name}", f"bench-lake-{name}-")
        try:
            t = time.perf_counter()
            lines = LAKES[name](root, readings=args.readings, hours=args.hours,
                                vehicles=args.vehicles, files=args.files)
            result[name] = measure(root, lines, time.perf_counter() - t, args)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    emit("aggregate", result, args.json)
    return result


if __name__ == "__main__":
    main()
