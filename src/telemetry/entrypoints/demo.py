"""`telemetry demo`: the whole pipeline on the embedded default, end to end, self-checked.

Starts `telemetry serve` as a process and a worker (the same Worker as `telemetry worker`) in
this process, drives a simulated fleet over HTTP (or, with `--replay`, a real CAN log through
`telemetry.entrypoints.replay`), drains, aggregates, then checks the lake: every accepted
reading stored, and counted exactly once in the hourly aggregates.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from telemetry.adapters.private_files import make_private_dirs, open_private
from telemetry.domain import lake
from telemetry.domain.aggregation import decode_aggregate_lines
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.readings import Record
from telemetry.entrypoints import logs, report
from telemetry.entrypoints.aggregate_jobs import with_progress
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.loopback import free_port
from telemetry.entrypoints.settings import install_hint, load_settings
from telemetry.entrypoints.simulate import simulate
from telemetry.entrypoints.worker import Worker
from telemetry.entrypoints.worker_observers import DrainProgress, observers


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy in time")


def _records(container: Container, prefix: str) -> list[Record]:
    """Every raw line of this run's vehicles, read as aggregation reads them."""
    keys = [k for k in container.storage().list(lake.RAW) if lake.is_raw_file(k)]
    return [r for r in container.aggregate_hours().read_hour(keys)
            if r.vehicle_id.startswith(prefix)]


# The sample real-vehicle logs (`--replay car|truck|kona`) shipped in the package: DBC and log
# under samples/can/, the signal map under samples/maps/.
REPLAY_PRESETS = {
    "car": ("canmod-gps.dbc", "css-car-gnss-obd2.candump.log.gz", "css-car-gnss-obd2.yaml"),
    "truck": ("css-j1939-demo.dbc", "css-truck-j1939.candump.log.gz", "css-truck-j1939.yaml"),
    "kona": ("css-uds-kona-ev.dbc", "css-kona-ev-uds.mf4", "css-kona-ev-uds.yaml"),
}
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"  # src/telemetry/samples


def _replay_files(args: argparse.Namespace) -> tuple[str, Path, Path, Path | None] | str:
    """(name, dbc, log, map) for `--replay`/`--log`, or why not (a message)."""
    if args.replay and args.log:
        return "--replay and --log exclude each other"
    if args.replay:
        dbc_name, log_name, map_name = REPLAY_PRESETS[args.replay]
        dbc, log = SAMPLES / "can" / dbc_name, SAMPLES / "can" / log_name
        map_path: Path | None = Path(args.map) if args.map else SAMPLES / "maps" / map_name
        name = args.replay
    else:
        if not args.dbc:
            return "--log needs --dbc"
        dbc, log, name = Path(args.dbc), Path(args.log), "log"
        map_path = Path(args.map) if args.map else None
    for f in (dbc, log, map_path):
        if f is not None and not f.is_file():
            return f"{f}: no such file"
    return name, dbc, log, map_path


def _mean(value: float) -> str:
    """A mean for the table; '-' for a vehicle without that signal."""
    return "-" if math.isnan(value) else f"{value:.1f}"


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "replay", None) or getattr(args, "log", None):
        # Check the files before any process starts; the CAN extras are optional.
        try:
            from telemetry.adapters.canlog import CanLogError, FrameDecoder, check_log
        except ImportError:
            print(f"telemetry demo: --replay needs the can extra: {install_hint('can')}",
                  file=sys.stderr)
            return 2
        files = _replay_files(args)
        if isinstance(files, str):
            print(f"telemetry demo: {files}", file=sys.stderr)
            return 2
        try:
            FrameDecoder.from_files(files[1], map_path=files[3])
            check_log(files[2])
        except CanLogError as exc:
            print(f"telemetry demo: {exc}", file=sys.stderr)
            return 2
        args.replay_files = files
    if getattr(args, "backend", "embedded") != "aws":
        return _run_demo(args, {})
    from telemetry.entrypoints.local_aws import local_stack, patched_environ

    with contextlib.ExitStack() as stack:
        try:
            aws_env = stack.enter_context(local_stack())
        except RuntimeError as exc:  # moto[server] missing, or it would not start
            print(f"telemetry demo --backend aws: {exc}", file=sys.stderr)
            return 2
        # The worker runs in this process: its boto3 clients read os.environ.
        stack.enter_context(patched_environ(aws_env))
        print(f"SQS + S3 on a local moto server at {aws_env['AWS_ENDPOINT_URL']}")
        return _run_demo(args, aws_env)


def _run_demo(args: argparse.Namespace, backend_env: dict[str, str]) -> int:
    data_dir = Path(os.environ.get("TELEMETRY_DATA_DIR") or tempfile.mkdtemp(prefix="telemetry-"))
    env = {
        **os.environ,
        "TELEMETRY_DATA_DIR": str(data_dir),
        "TELEMETRY_QUEUE": "sqlite",
        "TELEMETRY_STORAGE": "filesystem",
        "TELEMETRY_LOG_LEVEL": os.environ.get("TELEMETRY_LOG_LEVEL", "WARNING"),
        # the demo's server is its own: any free port for its operations listener
        "TELEMETRY_OPS_PORT": os.environ.get("TELEMETRY_OPS_PORT", "0"),
        **backend_env,
    }
    settings = load_settings(env)
    logs.configure(settings.log_format, settings.log_level)
    make_private_dirs(data_dir)
    container = create_container(settings)
    run_id = secrets.token_hex(3)
    prefix = f"demo-{run_id}"
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    container.api_keys().add(
        new_stored_key(key_id, secret, f"demo-{run_id}", [f"{prefix}*"], datetime.now(UTC))
    )
    api_key = format_key(key_id, secret)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = os.fdopen(  # closed below
        open_private(data_dir / "serve.log", os.O_WRONLY | os.O_APPEND), "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "serve", "--port", str(port)],
        env=env, stdout=server_log, stderr=subprocess.STDOUT,
    )
    print(f"data dir {data_dir}; ingest on {url} (pid {server.pid}); run {run_id}")
    stop = threading.Event()
    drain = container.drain_batches()
    watch = observers(settings, drain)
    worker = Worker(drain, stop, clock=container.clock(), poll_wait=0.5, observers=watch.all)
    worker_thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    try:
        wait_healthy(url, server)
        worker_thread.start()
        sim = _drive(args, url, api_key, prefix)
    finally:
        stop.set()
        worker_thread.join(timeout=60)
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        watch.close()
    # What the worker had not received when it stopped, a second pass drains (`worker --once`).
    drain = container.drain_batches()
    watchers = [*observers(settings, drain, listen=False).all, DrainProgress("drain the rest")]
    rest = Worker(drain, clock=container.clock(), observers=watchers).run(once=True)
    stats = worker.stats
    stats.merge(rest)
    t0 = time.monotonic()
    service = container.aggregate_hours()
    results = service.changed(with_progress(lambda todo: (service.hour(h, k) for h, k in todo)))
    agg_s = time.monotonic() - t0
    code = _report(container, sim, stats, results, prefix, agg_s)
    files = getattr(args, "replay_files", None)
    vehicle = f"{prefix}-{files[0]}" if files else None  # as `_drive` names it
    html = report.gather(container, settings, vehicle=vehicle,
                         signal_hours=[r.hour for r in results],
                         title=f"telemetry demo {run_id}",
                         resent_on_purpose=getattr(sim, "resent_readings", 0))
    print(f"HTML report: {report.write(data_dir / 'report.html', html)}")
    return code


def _drive(args: argparse.Namespace, url: str, api_key: str, prefix: str) -> Any:
    """Post readings to the service: the simulated fleet, or a replayed log (`--replay`)."""
    files = getattr(args, "replay_files", None)
    if files is None:
        batch = args.batch or 100
        print(f"simulating {args.vehicles} vehicles x {args.rate:g} Hz for {args.duration:g} s, "
              f"{batch} readings per request ...")
        return simulate(url, api_key, vehicles=args.vehicles, rate=args.rate,
                        duration=args.duration, batch=batch, prefix=prefix, seed=args.seed,
                        progress=sys.stderr.isatty())
    from telemetry.entrypoints.replay import format_stats, replay

    name, dbc, log, map_path = files
    vehicle_id = f"{prefix}-{name}"
    batch = args.batch or 500
    # `now`: the log ends as the replay starts, so every ts passes the service's clock-skew rule
    # however fast the replay goes.
    print(f"replaying {log.name} as {vehicle_id} (--time now, --speed max), {batch} readings "
          "per request ...")
    result = replay(dbc=dbc, log=log, vehicle_id=vehicle_id, map_path=map_path,
                    time_mode="now", batch=batch, url=url, api_key=api_key,
                    progress=sys.stderr.isatty())
    for line in format_stats(result.stats):
        print(line)
    for problem in (result.fatal, result.stopped):
        if problem:
            print(f"replay: {problem}")
    return result


def _report(container: Container, sim: Any, stats: Any, results: Any, prefix: str,
            agg_s: float) -> int:
    records = _records(container, prefix)
    stored_ids = {r.reading_id for r in records}
    accepted = set(sim.accepted_ids)
    missing = accepted - stored_ids
    unexpected = stored_ids - accepted
    duplicates = len(records) - len(stored_ids)
    expected: Counter[tuple[str, str]] = Counter()
    seen: set[str] = set()
    for r in records:
        if r.reading_id in accepted and r.reading_id not in seen:
            seen.add(r.reading_id)
            expected[(lake.format_hour(r.ts), r.vehicle_id)] += 1
    storage = container.storage()
    counted: Counter[tuple[str, str]] = Counter()
    rows: list[Any] = []
    for hour_text in sorted({h for h, _ in expected}):
        key = lake.aggregate_key(lake.parse_hour(hour_text))
        for line in decode_aggregate_lines(storage.get(key)):
            if line.vehicle_id.startswith(prefix):
                counted[(hour_text, line.vehicle_id)] += line.readings
                rows.append(line)
    miscounted = {k for k in expected.keys() | counted.keys() if expected[k] != counted[k]}
    s = sim.summary
    print()
    print("== telemetry demo report ==")
    print(f"readings sent       {s.sent:>10,}   requests {s.requests:,}   retries {s.retries:,}")
    print(f"accepted (202)      {s.accepted:>10,}   rejected {s.rejected:,}")
    fleet = getattr(sim, "fleet", None)
    if fleet is not None:
        print(f"late, after a gap   {fleet.late:>10,}   in {fleet.bursts:,} bursts; sent twice "
              f"after a lost response {sim.resent_readings:,}")
    print(f"stored in the lake  {len(stored_ids):>10,}   raw lines {len(records):,} "
          f"(duplicates {duplicates:,})")
    print(f"files written       {stats.files:>10,}   bytes {stats.bytes:,}")
    print(f"hours aggregated    {len(results):>10,}   in {agg_s:.2f} s")
    print(f"ingest throughput   {s.accepted / max(sim.elapsed, 1e-9):>10,.0f} readings/s "
          f"over {sim.elapsed:.1f} s")
    for name, dist in (("received -> stored", stats.received_to_stored),
                       ("ts -> stored", stats.ts_to_stored)):
        d = dist.summary()
        print(f"latency {name:<19} p50 {d['p50_ms']:>8.0f} ms  p95 {d['p95_ms']:>8.0f} ms  "
              f"p99 {d['p99_ms']:>8.0f} ms  max {d['max_ms']:>8.0f} ms")
    if rows:
        hour = rows[0].hour_start
        print(f"\nper-vehicle counts for hour {hour:%Y-%m-%dT%H}Z (first 10 vehicles):")
        # An electric vehicle's state of charge is its headline, where it has one (the Kona).
        soc = any(SOC in r.signals for r in rows)
        print(f"  {'vehicle':<18} {'readings':>8}  {'mean km/h':>9}  "
              + (f"{'mean SoC %':>10}  " if soc else "") + "first_ts .. last_ts")
        for line in [r for r in rows if r.hour_start == hour][:10]:
            sp = line.signals.get("Vehicle.Speed", {}).get("mean", float("nan"))
            charge = line.signals.get(SOC, {}).get("mean", float("nan"))
            print(f"  {line.vehicle_id:<18} {line.readings:>8}  {_mean(sp):>9}  "
                  + (f"{_mean(charge):>10}  " if soc else "")
                  + f"{line.first_ts:%H:%M:%S} .. {line.last_ts:%H:%M:%S}")
    ok = not missing and not unexpected and not miscounted and s.accepted > 0
    print()
    print(f"self-check: missing {len(missing)}, unexpected {len(unexpected)}, "
          f"miscounted vehicle-hours {len(miscounted)} -> {'PASS' if ok else 'FAIL'}")
    for e in sim.errors:
        print(f"client error: {e}")
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the whole pipeline end to end on the embedded default, with a report",
        description="Start ingest and a worker on SQLite + filesystem (a fresh data dir, or "
        "TELEMETRY_DATA_DIR), drive a simulated fleet, drain, aggregate, report, and check "
        "that every accepted reading is stored and counted once (exit 1 if not).",
    )
    p.add_argument("--vehicles", type=int, default=50, help="simulated vehicles")
    p.add_argument("--rate", type=float, default=10.0, help="readings per vehicle per second")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of simulated driving")
    p.add_argument("--batch", type=int, help="readings per request (default: 100 simulated, "
                   "500 replayed)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulated fleet")
    p.add_argument("--backend", choices=["embedded", "aws"], default="embedded",
                   help="embedded: SQLite + filesystem; aws: SQS + S3 on a moto server the "
                   "demo starts on 127.0.0.1 (needs the aws-demo extra, moto[server])")
    r = p.add_argument_group(
        "replaying a real CAN log instead of simulating (needs the can extra)",
        "The log is decoded, shifted so that it ends now, and posted as fast as the service "
        "takes it; --vehicles, --rate, --duration and --seed do not apply.",
    )
    r.add_argument("--replay", choices=sorted(REPLAY_PRESETS),
                   help="one of the sample logs shipped with the package, with its DBC and map")
    r.add_argument("--log", help="another CAN log to replay (with --dbc)")
    r.add_argument("--dbc", help="the DBC for --log")
    r.add_argument("--map", help="signal map for --log (or instead of the preset's)")
    p.set_defaults(func=run_demo)
