"""What one ingest request costs, taken apart: the floor under `bench_ingest`.

    python -m bench.ingest_floor               # 100-reading JSON bodies, as bench_ingest

Two measurements, each in one process and one thread (the GIL makes that the bound of one
server process):

1. **Domain and queue**: CPU per request of what the POST handler does between the socket
   and the answer, without any server: the typed decode with the pattern checks,
   `AcceptReadings.execute` (rules, reading ids, lake lines, envelopes), and the SQLite
   queue's send (one commit and fsync per request here; the server groups concurrent ones).
   Also each part alone.
2. **Server stack**: readings/s of a bare ASGI app on the same uvicorn (uvloop, httptools) that
   reads the whole body and answers 202 with a body the size of ours (100 ids), under the
   same load as bench_ingest (`--load python|wrk`). What uvicorn, the event loop and loopback
   TCP cost, with no framework and no work.

Together: one process cannot go faster than 1 / (domain CPU + stack CPU) requests per core.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    base_parser,
    cpu_per_call,
    emit,
    median,
    request_bodies,
    scratch_dir,
    start_bare_app,
)
from bench.load import HOST, request_bytes, run_load, stop, wait_http
from telemetry.adapters.clock import SystemClock
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.accept import AcceptReadings
from telemetry.domain.readings import ReadingRules
from telemetry.entrypoints.http import bodies as wire
from telemetry.entrypoints.loopback import free_port
from telemetry.entrypoints.settings import Settings


def domain_costs(root: Path, bodies: list[bytes]) -> dict[str, float]:
    s = Settings()
    queue = SqliteQueue(root / "queue.sqlite3", visibility_timeout=s.visibility_timeout,
                        max_receives=s.max_receives, max_message_bytes=s.max_message_bytes)
    accept = AcceptReadings(queue, SystemClock(), ReadingRules())
    decoded = [wire.decode(wire.JSON, b) for b in bodies]
    prepared = [accept.execute(r, None).messages for r in decoded]
    it = iter(range(10**9))
    n = len(bodies)

    def whole() -> None:
        i = next(it) % n
        queue.send(accept.execute(wire.decode(wire.JSON, bodies[i]), None).messages)

    out = {
        "decode_us": cpu_per_call(lambda: wire.decode(wire.JSON, bodies[next(it) % n]),
                                  300) * 1e6,
        "prepare_us": cpu_per_call(lambda: accept.execute(decoded[next(it) % n], None),
                                   300) * 1e6,
        "send_us": cpu_per_call(lambda: queue.send(prepared[next(it) % n]), 300) * 1e6,
        "whole_us": cpu_per_call(whole, 300) * 1e6,
    }
    queue.close()
    return out


def stack_rate(root: Path, bodies: list[bytes], seconds: float, load: str, procs: int,
               conns: int, per_request: int) -> float:
    port = free_port()
    server = start_bare_app(root, HOST, port, per_request)
    try:
        wait_http(port, "/")
        reqs = [request_bytes(port, "/v1/readings", b, {"X-API-Key": "k"}) for b in bodies]
        res = run_load(load, port, reqs, seconds=seconds, procs=procs, conns=conns,
                       scratch=root / "wrk")
    finally:
        stop(server)
    if res.errors:
        raise SystemExit(f"bare app: {res.errors} non-202 answers: {res.statuses}")
    return res.accepted / res.seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--load", choices=("python", "wrk"), default="python")
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--conns", type=int, default=8, help="connections per load process")
    ap.add_argument("--dir", help="scratch directory (default: a fresh temp dir)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seconds, args.runs, args.load_procs, args.conns = 1.0, 1, 1, 2
    root = scratch_dir(args.dir, "bench-floor-")
    bodies = request_bodies(200 * args.per_request, args.per_request, vehicles=1000,
                            start=datetime.now(UTC) - timedelta(minutes=1))
    try:
        costs = [domain_costs(root, bodies) for _ in range(args.runs)]
        rates = [stack_rate(root, bodies, args.seconds, args.load, args.load_procs, args.conns,
                                  args.per_request)
                 for _ in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"per_request": args.per_request, "runs": args.runs,
                              "load": f"{args.load}: {args.load_procs} x {args.conns} conns"}
    for k in costs[0]:
        result[f"domain_{k}_cpu_per_request"] = round(median([c[k] for c in costs]), 1)
    whole = result["domain_whole_us_cpu_per_request"]
    result["domain_readings_per_cpu_s"] = round(args.per_request / whole * 1e6)
    result["bare_stack_requests_per_s"] = round(median(rates))
    result["bare_stack_readings_per_s"] = round(median(rates) * args.per_request)
    emit("ingest_floor", result, args.json)
    return result


if __name__ == "__main__":
    main()
