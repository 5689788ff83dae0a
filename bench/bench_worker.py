"""Worker: readings/s drained from the SQLite queue into the filesystem lake.

    python -m bench.bench_worker               # 300,000 readings in 100-reading messages

A queue is pre-filled (not timed) with readings packed exactly as ingest packs them
(`AcceptReadings.execute`, one send per 100-reading request), by child processes so that this
process's memory reflects the drain alone. Then `DrainBatches.until_empty()` is timed at the default
batch policy: receive, batch per hour, write files (fsync), delete. Peak RSS is this process's
high-water mark over the drain.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from tests.support.ingest import SyncIngest

from bench.common import (
    base_parser,
    emit,
    lake_storage,
    median,
    peak_rss_kib,
    request_bodies,
    rss_kib,
    scratch_dir,
)
from telemetry.adapters.clock import SystemClock
from telemetry.adapters.memory import MemoryQueue
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import ReadingBatch, ReadingRules
from telemetry.entrypoints.settings import Settings

_decoder = msgspec.json.Decoder(ReadingBatch)


def _queue(path: Path) -> SqliteQueue:
    s = Settings()
    return SqliteQueue(path, visibility_timeout=s.visibility_timeout,
                       max_receives=s.max_receives, max_message_bytes=s.max_message_bytes)


def _fill(path: str, n: int, per_request: int, vehicles: int, start: datetime,
          one_vehicle: bool) -> int:
    queue = _queue(Path(path))
    accept = SyncIngest(queue, SystemClock(), ReadingRules())
    for body in request_bodies(n, per_request, vehicles=vehicles, start=start,
                               one_vehicle=one_vehicle):
        accept.execute(_decoder.decode(body).readings, None)
    queue.close()
    return n


def prefill(path: Path, n: int, per_request: int, vehicles: int, procs: int,
            one_vehicle: bool = False) -> None:
    # Event times end about now, 1 ms apart: an hour boundary or two, as in a live fleet.
    start = datetime.now(UTC) - timedelta(milliseconds=n)
    share = -(-n // procs)
    _queue(path).close()  # create the schema once, before the children race for it
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_fill, [str(path)] * procs,
                      [min(share, n - i * share) for i in range(procs)],
                      [per_request] * procs, [vehicles] * procs,
                      [start + timedelta(milliseconds=i * share) for i in range(procs)],
                      [one_vehicle] * procs))


def _memory_queue(n: int, per_request: int, vehicles: int, one_vehicle: bool) -> MemoryQueue:
    """The same messages in the in-memory queue: what the domain and the lake writes cost
    without the SQLite adapter."""
    queue = MemoryQueue(visibility_timeout=Settings().visibility_timeout)
    accept = SyncIngest(queue, SystemClock(), ReadingRules())
    start = datetime.now(UTC) - timedelta(milliseconds=n)
    for body in request_bodies(n, per_request, vehicles=vehicles, start=start,
                               one_vehicle=one_vehicle):
        accept.execute(_decoder.decode(body).readings, None)
    return queue


def drain_once(root: Path, n: int, per_request: int, vehicles: int, procs: int, kind: str,
               receive_max: int = 100, one_vehicle: bool = False) -> dict[str, Any]:
    qpath = root / "queue.sqlite3"
    lake = root / "lake"
    queue: Any
    if kind == "memory":
        queue = _memory_queue(n, per_request, vehicles, one_vehicle)
    else:
        prefill(qpath, n, per_request, vehicles, procs, one_vehicle)
        queue = _queue(qpath)
    drain = DrainBatches(queue, lake_storage(lake), SystemClock(), BatchPolicy(),
                         receive_max=receive_max)
    rss0 = rss_kib()
    t = time.perf_counter()
    files = drain.until_empty()
    elapsed = time.perf_counter() - t
    if kind == "sqlite":
        queue.close()
    stored = sum(f.readings for f in files)
    if stored != n:
        raise SystemExit(f"drained {stored} readings, expected {n}")
    for p in (qpath, lake):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(qpath) + suffix).unlink(missing_ok=True)
    return {"seconds": elapsed, "files": len(files), "rss_before_kib": rss0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--fill-procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--queue", choices=("sqlite", "memory"), default="sqlite",
                    help="memory: the domain and lake writes alone, without the SQLite adapter")
    ap.add_argument("--receive-max", type=int, default=100,
                    help="messages per receive (the worker's receive_max)")
    ap.add_argument("--one-vehicle", action="store_true",
                    help="each request holds one vehicle's readings: the worker also writes "
                    "their partial aggregates (ADR 0006)")
    ap.add_argument("--dir", help="scratch directory (default: a fresh temp dir)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.readings, args.vehicles, args.runs, args.fill_procs = 1000, 10, 1, 1
    root = scratch_dir(args.dir, "bench-worker-")
    try:
        runs = [drain_once(root, args.readings, args.per_request, args.vehicles,
                           args.fill_procs, args.queue, args.receive_max, args.one_vehicle)
                for _ in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    secs = [r["seconds"] for r in runs]
    policy = BatchPolicy()
    result = {
        "queue": args.queue,
        "receive_max": args.receive_max,
        "one_vehicle_per_request": args.one_vehicle,
        "readings": args.readings,
        "runs": args.runs,
        "files_per_run": runs[0]["files"],
        "readings_per_s_median": args.readings / median(secs),
        "readings_per_s_each": [round(args.readings / s) for s in secs],
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "rss_before_drain_mib": round(runs[0]["rss_before_kib"] / 1024, 1),
        "bound_mib": round(policy.max_bytes * policy.max_open_hours / 2**20 + 100, 1),
    }
    emit("worker", result, args.json)
    return result


if __name__ == "__main__":
    main()
