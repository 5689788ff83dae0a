"""`telemetry simulate`: a synthetic fleet posting readings to the ingest API in real time.

The fleet itself (drive cycles, powertrains, clocks, connectivity gaps) is the pure model in
`telemetry.domain.simulation`; this module paces it on the wall clock, batches what the
vehicles deliver into requests, sends them from a few threads, and injects the one network fault
the model cannot: a response lost after the service accepted the request, which makes the client
send the whole batch again with the same reading ids.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from telemetry.adapters.ingest_client import ClientSummary, IngestClient
from telemetry.domain.readings import MAX_VEHICLE_ID, VEHICLE_ID_PATTERN
from telemetry.domain.simulation import Fleet, FleetConfig, FleetStats, ticks
from telemetry.entrypoints.fleet_client import (
    IngestSender,
    exit_status,
    keep_error,
    refused,
    start_time,
    stopped_after,
    summary_line,
    vehicle_id_ok,
)
from telemetry.entrypoints.progress import Progress


@dataclass
class SimulationResult:
    summary: ClientSummary
    elapsed: float
    accepted_ids: list[str] = field(default_factory=list)  # each accepted reading once
    accepted_by_vehicle: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    fleet: FleetStats = field(default_factory=FleetStats)
    resent_requests: int = 0  # batches sent again after a (simulated) lost response
    resent_readings: int = 0
    interrupted: bool = False
    stopped: str | None = None  # the service refused the key: every later request would fail


def simulate(
    url: str,
    api_key: str,
    *,
    vehicles: int = 10,
    rate: float = 1.0,
    duration: float = 10.0,
    batch: int = 100,
    senders: int = 4,
    seed: int = 0,
    prefix: str = "veh",
    progress: bool = False,
    electric_share: float = 0.3,
    clock_skew: float = 2.0,
    jitter: float = 0.02,
    gaps_per_hour: float = 30.0,
    gap_seconds: tuple[float, float] = (2.0, 20.0),
    lost_responses: float = 0.02,
    start: datetime | None = None,
    dry_run: TextIO | None = None,
    client_factory: Callable[[], IngestSender] | None = None,
) -> SimulationResult:
    """Take `rate` readings per vehicle per second for `duration` seconds, paced in real time,
    and post them in requests of `batch` readings from `senders` threads.

    `start` is the fleet's clock at the first reading (default: now). A fraction
    `lost_responses` of accepted requests is sent a second time, as by a client whose response
    got lost. `dry_run` writes the readings as NDJSON to that stream instead, unpaced.
    """
    rng = random.Random(seed)
    config = FleetConfig(
        vehicles=vehicles, prefix=prefix, electric_share=electric_share,
        clock_skew_s=clock_skew, jitter_s=jitter, gaps_per_hour=gaps_per_hour,
        gap_s=gap_seconds,
    )
    fleet = Fleet(config, rng, start or datetime.now(UTC))
    faults = random.Random(rng.getrandbits(64))
    result = SimulationResult(ClientSummary(), 0.0, fleet=fleet.stats)
    n = ticks(duration, rate)
    dt = 1.0 / rate
    if dry_run is not None:
        return _dry_run(fleet, n, dt, dry_run, result)

    work: queue.Queue[tuple[list[dict[str, Any]], bool] | None] = queue.Queue(maxsize=senders * 4)
    lock = threading.Lock()
    stop = threading.Event()
    make_client: Callable[[], IngestSender] = client_factory or (lambda: IngestClient(url, api_key))

    def sender() -> None:
        client = make_client()
        try:
            while (item := work.get()) is not None:
                if stop.is_set():
                    continue  # drain the queue so the producer never blocks on it
                readings, resend = item
                ids = client.send(readings)
                if ids and resend:
                    # The service stored the batch; only the answer was lost. The client cannot
                    # tell, so it sends the same readings, same ids, again.
                    again = client.send(readings)
                    with lock:
                        result.resent_requests += 1
                        result.resent_readings += len(again)
                with lock:
                    result.accepted_ids.extend(ids)
                    if ids:
                        for r in readings:
                            v = r["vehicle_id"]
                            result.accepted_by_vehicle[v] = result.accepted_by_vehicle.get(v, 0) + 1
                    err = getattr(client, "last_error", None)
                    if not ids and err is not None:
                        keep_error(result.errors, err)
                        if refused(err):
                            result.stopped = stopped_after(err)
                            stop.set()
        finally:
            with lock:
                result.summary.merge(client.summary)
            client.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    bar = Progress("simulate", duration, unit="s", items_unit="readings",
                   enabled=True) if progress else None
    pending: list[dict[str, Any]] = []

    def put(readings: list[dict[str, Any]]) -> None:
        work.put((readings, faults.random() < lost_responses))

    began = time.monotonic()
    try:
        for tick in range(n):
            if stop.is_set():
                break
            delay = began + tick * dt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pending.extend(fleet.tick(dt))
            while len(pending) >= batch:
                put(pending[:batch])
                pending = pending[batch:]
            if bar:
                accepted = len(result.accepted_ids)
                bar.update((tick + 1) * dt, accepted,
                           f"accepted={accepted} offline={fleet.offline}")
        # The run is over: every link comes back and delivers its backlog.
        pending.extend(fleet.flush())
        for i in range(0, len(pending), batch):
            put(pending[i : i + batch])
    except KeyboardInterrupt:
        result.interrupted = True
        stop.set()
    finally:
        for _ in threads:
            work.put(None)
        for t in threads:
            t.join()
        if bar:
            accepted = len(result.accepted_ids)
            bar.update(duration, accepted, f"accepted={accepted}", force=True)
            bar.close()
    result.elapsed = time.monotonic() - began
    return result


def _dry_run(fleet: Fleet, n: int, dt: float, out: TextIO,
             result: SimulationResult) -> SimulationResult:
    enc = msgspec.json.Encoder()
    began = time.monotonic()
    for tick in range(n + 1):
        readings = fleet.tick(dt) if tick < n else fleet.flush()
        for r in readings:
            out.write(enc.encode(r).decode() + "\n")
        result.summary.sent += len(readings)
    result.elapsed = time.monotonic() - began
    return result


# ------------------------------------------------------------------ command line


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number within 0..1")
    return f


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="drive a synthetic fleet against the ingest API",
        description="Post readings of a synthetic fleet (combustion and electric vehicles in "
        "idle, urban and highway drive cycles, VSS signal names), paced in real time, with "
        "clock skew, connectivity gaps (late data in bursts) and lost responses (batches sent "
        "twice), then print a summary: sent, accepted, rejected, retries. Deterministic for a "
        "--seed (and --start). See docs/replay.md.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="ingest base URL")
    p.add_argument("--api-key", default=os.environ.get("TELEMETRY_API_KEY"), help="API key "
                   "(default: $TELEMETRY_API_KEY)")
    p.add_argument("--vehicles", type=int, default=10, help="number of vehicles")
    p.add_argument("--rate", type=float, default=1.0, help="readings per vehicle per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    p.add_argument("--batch", type=int, default=100, help="readings per request")
    p.add_argument("--senders", type=int, default=4, help="concurrent HTTP senders")
    p.add_argument("--seed", type=int, default=0, help="random seed (deterministic fleet)")
    p.add_argument("--prefix", default="veh", help="vehicle id prefix: PREFIX-0000, ...")
    p.add_argument("--start", type=start_time, metavar="RFC3339",
                   help="the fleet clock at the first reading (default: now)")
    p.add_argument("--electric-share", type=_fraction, default=0.3,
                   help="fraction of battery electric vehicles (default 0.3)")
    p.add_argument("--clock-skew", type=float, default=2.0, metavar="S",
                   help="standard deviation of each vehicle's clock offset, s (default 2)")
    p.add_argument("--gaps-per-hour", type=float, default=30.0, metavar="N",
                   help="connectivity gaps per vehicle-hour; readings of a gap arrive late, "
                   "in a burst (default 30; 0 = none)")
    p.add_argument("--lost-responses", type=_fraction, default=0.02, metavar="P",
                   help="fraction of accepted requests sent again, as after a lost response "
                   "(default 0.02)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the readings as NDJSON on stdout, unpaced, instead of sending "
                   "them (the summary goes to stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    err = sys.stderr
    if not args.dry_run and not args.api_key:
        print("telemetry simulate: --api-key or TELEMETRY_API_KEY is required", file=err)
        return 2
    if (args.vehicles < 1 or args.rate <= 0 or args.duration <= 0 or args.batch < 1
            or args.senders < 1):
        print("telemetry simulate: --vehicles, --rate, --duration, --batch, --senders must be "
              "> 0", file=err)
        return 2
    last_id = f"{args.prefix}-{args.vehicles - 1:04d}"
    if not vehicle_id_ok(last_id):
        print(f"telemetry simulate: --prefix {args.prefix!r} makes vehicle ids like {last_id!r}, "
              f"which must match {VEHICLE_ID_PATTERN}, 1-{MAX_VEHICLE_ID} chars", file=err)
        return 2
    if args.clock_skew < 0 or args.gaps_per_hour < 0:
        print("telemetry simulate: --clock-skew and --gaps-per-hour must be >= 0", file=err)
        return 2
    r = simulate(
        args.url, args.api_key or "", vehicles=args.vehicles, rate=args.rate,
        duration=args.duration, batch=args.batch, senders=args.senders, seed=args.seed,
        prefix=args.prefix, progress=err.isatty() and not args.dry_run,
        electric_share=args.electric_share, clock_skew=args.clock_skew,
        gaps_per_hour=args.gaps_per_hour, lost_responses=args.lost_responses, start=args.start,
        dry_run=sys.stdout if args.dry_run else None,
    )
    s, f = r.summary, r.fleet
    for e in r.errors:
        print(f"error: {e}", file=err)
    if r.stopped:
        print(f"telemetry simulate: {r.stopped}", file=err)
    out = err if args.dry_run else sys.stdout
    print(f"readings={f.generated} late={f.late} bursts={f.bursts} "
          f"max_late_s={f.max_late_s:.1f}", file=out)
    print(summary_line(s, r.elapsed, f"resent={r.resent_readings} "), file=out)
    return exit_status(s, stopped=r.stopped, interrupted=r.interrupted)
