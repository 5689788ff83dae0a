"""End to end: received -> stored latency under a steady load at half the max ingest rate.

    python -m bench.bench_e2e                  # 5 s to find the max, then 30 s at half of it

`telemetry serve` and `telemetry worker` run on one embedded data dir (SQLite queue,
filesystem lake) at the default batch policy. The max rate is measured with the worker
running; the steady load is paced at half of it. Then the load stops, the worker is stopped
(SIGTERM: it flushes), and every reading in the lake is read back: stored is the instant its
file was renamed into place (the file's mtime), received is its `received_at`.
Target: p99 <= batch max age + 1 s.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from bench.common import base_parser, emit, request_bodies, scratch_dir
from bench.load import (
    BIN,
    create_key,
    drive,
    request_bytes,
    start_serve,
    stop,
    telemetry_env,
)
from telemetry.entrypoints.loopback import free_port
from telemetry.entrypoints.settings import Settings


class _Line(msgspec.Struct):
    received_at: datetime


def latencies_ms(lake: Path) -> list[float]:
    decoder = msgspec.json.Decoder(_Line)
    out: list[float] = []
    for f in sorted((lake / "raw").rglob("*.jsonl")):
        stored = f.stat().st_mtime_ns / 1e9
        out.extend((stored - r.received_at.timestamp()) * 1000
                   for r in decoder.decode_lines(f.read_bytes()))
    return out


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="steady load duration")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="readings/s of the steady load (default: half the probed max)")
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--batch-max-age", type=float, default=Settings().batch_max_age)
    ap.add_argument("--dir", help="scratch directory (default: a fresh temp dir)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.probe_seconds, args.seconds, args.batch_max_age = 1.0, 2.0, 1.0
    age = args.batch_max_age
    root = scratch_dir(args.dir, "bench-e2e-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    bodies = request_bodies(200 * args.per_request, args.per_request, vehicles=1000,
                            start=datetime.now(UTC) - timedelta(minutes=1))
    key = create_key(data)
    port = free_port()
    server = start_serve(data, port)
    worker = subprocess.Popen([str(BIN / "telemetry"), "worker"],
                              env=telemetry_env(data, TELEMETRY_BATCH_MAX_AGE=str(age)))
    try:
        reqs = [request_bytes(port, "/v1/readings", b, {"X-API-Key": key}) for b in bodies]
        probe = drive(port, reqs, seconds=args.probe_seconds)
        max_rate = probe.accepted * args.per_request / probe.seconds
        rate = args.rate or max_rate / 2
        time.sleep(age + 2)  # let the probe's readings drain first
        for f in (data / "lake" / "raw").rglob("*.jsonl"):
            f.unlink()  # only the steady load's readings are measured
        steady = drive(port, reqs, seconds=args.seconds, rate=rate / args.per_request,
                       procs=1, conns=8)
        time.sleep(age + 2)
    finally:
        stop(server)
        worker.terminate()
        worker.wait(60)
    lat = sorted(latencies_ms(data / "lake"))
    shutil.rmtree(root, ignore_errors=True)
    target_ms = (age + 1) * 1000
    result = {
        "max_ingest_readings_per_s": round(max_rate),
        "steady_target_readings_per_s": round(rate),
        "steady_achieved_readings_per_s": round(
            steady.accepted * args.per_request / steady.seconds),
        "steady_non_202": steady.errors,
        "readings_stored": len(lat),
        "received_to_stored_p50_ms": round(pct(lat, 50), 1),
        "received_to_stored_p99_ms": round(pct(lat, 99), 1),
        "received_to_stored_max_ms": round(lat[-1], 1) if lat else 0.0,
        "target_p99_ms": target_ms,
        "target_met": bool(lat) and pct(lat, 99) <= target_ms,
    }
    emit("e2e", result, args.json)
    return result


if __name__ == "__main__":
    main()
