"""Soak: nothing answered 202 is ever lost while workers are killed and restarted.

    python -m bench.bench_soak                  # 1,000,000 readings, 3 workers, a kill every 3 s
    python -m bench.bench_soak --tiny           # a few thousand readings, seconds of wall time

Readings of the synthetic fleet (`telemetry.domain.simulation`, 1 Hz per vehicle, stamped in
the recent past so the whole run passes the clock-skew rule) are posted to a real
`telemetry serve`, unpaced (or at `--rate`), from keep-alive connections of one asyncio client
that keeps the reading ids of every 202 body and nothing else of the responses. 429, 503 and
connection errors are retried with the same body (the service derives the same ids); other
statuses are not. A share of accepted requests (`--resend`) is posted a second time, as after
a lost response, and must come back with the same ids.

Meanwhile `--workers` `telemetry worker` processes drain the queue, and every `--kill-every`
seconds (+-50 %) one of those that are up (its log shows it started: it drains, and its
signal handlers are in place) is killed, SIGKILL mostly and SIGTERM now and then, and another
is started. Then the load stops, a full set of workers drains the queue until it is empty (a
killed worker's messages come back after the visibility timeout), the workers are stopped
with SIGTERM, `telemetry aggregate` runs, and the lake is read back into a ledger:

- lost: accepted ids not in the raw lake (must be 0); unexpected: lake ids never accepted;
- counted: the sum of `readings` over the aggregate lines, which must equal the distinct
  accepted ids (duplicates in raw never count twice);
- dead letters: messages the queue gave up on after max receives (their readings are in
  no raw file; `telemetry dlq redrive` would bring them back).

The workers run a shorter batch max age and visibility timeout than the defaults (options), so
that kills every few seconds still let batches out and the final drain does not wait a minute
for a killed worker's messages. Loopback only; data in a temp dir (kept when the run fails) or
`--data-dir`. Exit status 1 when lost > 0 or counted != distinct accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from bench.common import base_parser, emit, peak_rss_kib, scratch_dir
from bench.load import (
    BIN,
    HOST,
    create_key,
    request_bytes,
    stop,
    telemetry_env,
    wait_http,
)
from telemetry.domain.packing import unpack
from telemetry.domain.simulation import Fleet, FleetConfig
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.loopback import free_port
from telemetry.entrypoints.settings import load_settings

RETRY_STATUSES = frozenset((429, 502, 503, 504))


class _Accepted(msgspec.Struct):
    accepted: int
    reading_ids: list[str]


class _Line(msgspec.Struct):
    reading_id: str


class _AggLine(msgspec.Struct):
    readings: int


# ------------------------------------------------------------------ the load


def fleet_readings(n: int, *, vehicles: int, seed: int) -> Iterator[dict[str, Any]]:
    """`n` fleet readings in the order the fleet delivers them, lazily.

    The fleet takes one reading per vehicle per second, from a start far enough in the past
    that its clock never runs ahead of now, however fast the readings are posted."""
    ticks = -(-n // vehicles)
    start = datetime.now(UTC) - timedelta(seconds=ticks + 120)
    fleet = Fleet(FleetConfig(vehicles=vehicles), random.Random(seed), start)
    left = n
    while left > 0:
        got = fleet.tick(1.0) if fleet.t < ticks else fleet.flush()
        if fleet.t >= ticks and not got:
            break  # the fleet has nothing more to deliver
        got = got[:left]
        left -= len(got)
        yield from got


def fleet_bodies(n: int, *, vehicles: int, per_request: int, seed: int,
                 one_vehicle: bool = False) -> Iterator[tuple[bytes, int]]:
    """`(body, readings)` of `n` fleet readings in requests of `per_request`, lazily: in the
    order delivered (a gateway posting for the fleet), or `one_vehicle` at a time (each
    vehicle posting its own; up to vehicles x per_request readings wait in memory)."""
    enc = msgspec.json.Encoder()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in fleet_readings(n, vehicles=vehicles, seed=seed):
        group = groups.setdefault(r["vehicle_id"] if one_vehicle else "", [])
        group.append(r)
        if len(group) == per_request:
            yield enc.encode({"readings": group}), len(group)
            group.clear()
    for group in groups.values():
        if group:
            yield enc.encode({"readings": group}), len(group)


@dataclass
class LoadStats:
    readings_generated: int = 0
    requests: int = 0  # attempts, retries and resends included
    readings_posted: int = 0  # readings in those attempts
    accepted_in_202: int = 0  # reading ids in 202 bodies, resends included
    accepted: set[str] = field(default_factory=set)
    resent_requests: int = 0
    resend_id_mismatches: int = 0
    id_count_mismatches: int = 0  # a 202 whose reading_ids do not match the request
    failures: dict[str, int] = field(default_factory=dict)  # failed attempt by status / error
    retried_attempts: int = 0
    rejected_requests: int = 0  # non-retryable non-202: not retried
    rejected_readings: int = 0
    given_up_requests: int = 0  # retryable failures past max attempts
    given_up_readings: int = 0
    seconds: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length < 0:
        raise ConnectionError("response without Content-Length")
    return status, await reader.readexactly(length)


class _Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(request)
        await self.writer.drain()
        return await _read_response(self.reader)

    async def close(self) -> None:
        w, self.writer, self.reader = self.writer, None, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


async def _send(conn: _Conn, request: bytes, n: int, stats: LoadStats,
                max_attempts: int) -> list[str] | None:
    """One request, retried on 429/5xx-unavailable and connection errors; the accepted ids,
    or None when it was rejected or given up."""
    decode = msgspec.json.Decoder(_Accepted).decode
    for attempt in range(1, max_attempts + 1):
        stats.requests += 1
        stats.readings_posted += n
        try:
            status, body = await conn.post(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError) as exc:
            await conn.close()
            why = f"connection:{type(exc).__name__}"
        else:
            if status == 202:
                ids = decode(body).reading_ids
                stats.accepted_in_202 += len(ids)
                if len(ids) != n:
                    stats.id_count_mismatches += 1
                return ids
            why = str(status)
            if status not in RETRY_STATUSES:
                stats.failures[why] = stats.failures.get(why, 0) + 1
                stats.rejected_requests += 1
                stats.rejected_readings += n
                if stats.rejected_requests <= 3:
                    print(f"soak: HTTP {status}: {body[:300]!r}", file=sys.stderr)
                return None
        stats.failures[why] = stats.failures.get(why, 0) + 1
        if attempt < max_attempts:
            stats.retried_attempts += 1
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2))
    stats.given_up_requests += 1
    stats.given_up_readings += n
    return None


async def _load(port: int, key: str, bodies: Iterator[tuple[bytes, int]], *, conns: int,
                rate: float, resend: float, seed: int, max_attempts: int) -> LoadStats:
    stats = LoadStats()
    rng = random.Random(seed ^ 0x5EED)
    headers = {"X-API-Key": key}
    began = time.monotonic()
    budget = 0  # readings handed out so far, for pacing

    def take() -> tuple[bytes, int] | None:
        nonlocal budget
        item = next(bodies, None)
        if item is not None:
            budget += item[1]
            stats.readings_generated += item[1]
        return item

    async def connection() -> None:
        conn = _Conn(port)
        try:
            while (item := take()) is not None:
                body, n = item
                if rate:
                    delay = began + budget / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                request = request_bytes(port, "/v1/readings", body, headers)
                ids = await _send(conn, request, n, stats, max_attempts)
                if ids is None:
                    continue
                stats.accepted.update(ids)
                if rng.random() < resend:
                    # As after a lost response: the same readings again, the same ids back.
                    stats.resent_requests += 1
                    again = await _send(conn, request, n, stats, max_attempts)
                    if again is not None and again != ids:
                        stats.resend_id_mismatches += 1
        finally:
            await conn.close()

    await asyncio.gather(*(connection() for _ in range(conns)))
    stats.seconds = time.monotonic() - began
    return stats


# ------------------------------------------------------------------ the workers and the chaos


class Workers:
    """`telemetry worker` processes, killed at random and started again; each logs (JSON, at
    info) to a file of its own, which also tells when its signal handlers are installed."""

    def __init__(self, env: dict[str, str], log_dir: Path, count: int, seed: int) -> None:
        self.env = {**env, "TELEMETRY_LOG_LEVEL": "info", "TELEMETRY_LOG_FORMAT": "json"}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.rng = random.Random(seed)
        self.kills: dict[str, int] = {"SIGKILL": 0, "SIGTERM": 0}
        self.started = 0
        self.skipped = 0  # kill rounds with no worker up yet
        self.before_first_file = 0  # SIGKILLs of a worker that had not written a file yet
        self.unexpected_exits: list[str] = []  # SIGTERM not answered by exit 0, deaths
        for _ in range(count):
            self.procs.append(self._start())

    def _start(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.started += 1
        log = self.log_dir / f"worker-{self.started:04d}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen([str(BIN / "telemetry"), "worker"], env=self.env,
                                 stdout=out, stderr=subprocess.STDOUT)
        return p, log

    @staticmethod
    def _ready(log: Path) -> bool:
        # The worker logs worker_started after installing its SIGTERM/SIGINT handlers.
        with open(log, "rb") as fh:
            return b'"worker_started"' in fh.read(64 * 1024)

    def kill_one(self, term_share: float) -> None:
        """Kill a worker that is up (one still starting holds nothing), then start another."""
        up = [i for i, (p, log) in enumerate(self.procs) if p.poll() is None and self._ready(log)]
        if not up:
            self.skipped += 1
            return
        i = self.rng.choice(up)
        p, log = self.procs[i]
        sig = signal.SIGTERM if self.rng.random() < term_share else signal.SIGKILL
        p.send_signal(sig)
        self.kills[sig.name] += 1
        with open(log, "rb") as fh:
            if sig is signal.SIGKILL and b'"file_written"' not in fh.read():
                self.before_first_file += 1
        try:
            rc = p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
            self.unexpected_exits.append(f"{log.name}: no exit 60 s after {sig.name}")
        if sig is signal.SIGTERM and rc != 0:
            self.unexpected_exits.append(f"{log.name}: exit {rc} after SIGTERM")
        self.procs[i] = self._start()

    def revive(self) -> None:
        """Start again any worker that died on its own."""
        for i, (p, log) in enumerate(self.procs):
            if p.poll() is not None:
                self.unexpected_exits.append(f"{log.name}: died on its own, exit {p.returncode}")
                self.procs[i] = self._start()

    def stop_all(self, ready_timeout: float = 60.0) -> None:
        # A worker still starting would die of SIGTERM's default action: let it start first.
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and not all(
                p.poll() is not None or self._ready(log) for p, log in self.procs):
            time.sleep(0.1)
        for p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, log in self.procs:
            try:
                rc = p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            if rc != 0:
                self.unexpected_exits.append(f"{log.name}: exit {rc} at the final SIGTERM")

    def close(self) -> None:
        for p, _ in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log_problems(self) -> dict[str, int]:
        """Warning and error events over every worker's log, by name; other lines (a
        traceback, say) as `not_json`."""
        counts: dict[str, int] = {}
        for log in sorted(self.log_dir.glob("worker-*.log")):
            for line in log.read_bytes().splitlines():
                try:
                    doc = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    name = "not_json"
                else:
                    if not isinstance(doc, dict) or doc.get("level") not in ("warning", "error"):
                        continue
                    name = f"{doc['level']}:{doc.get('event')}"
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))


def chaos(workers: Workers, done: threading.Event, every: float, term_share: float,
          rng: random.Random) -> None:
    while not done.wait(every * rng.uniform(0.5, 1.5)):
        workers.revive()
        workers.kill_one(term_share)


def queue_depth(data: Path) -> int | None:
    """Messages in the SQLite queue, visible or not (None: the file cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(data / "queue.sqlite3", timeout=10)) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return None


def wait_drained(data: Path, workers: Workers, timeout: float, fallback: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.revive()
        depth = queue_depth(data)
        if depth == 0:
            return True
        if depth is None:  # the queue is not readable here: give the workers time instead
            time.sleep(fallback)
            return True
        time.sleep(0.5)
    return False


def dead_letters(env: dict[str, str]) -> list[bytes] | None:
    """The bodies of the dead-lettered messages, through the queue port (None: unreadable)."""
    try:
        queue = create_container(load_settings(env)).queue()
        return [m.body for m in queue.dead_letters(10**9)]
    except Exception as exc:  # report, do not hide the ledger behind it
        print(f"soak: cannot read the dead letters: {exc!r}", file=sys.stderr)
        return None


# ------------------------------------------------------------------ reading the lake back


def raw_ids(lake: Path) -> tuple[set[str], int, int]:
    """Distinct reading ids in the raw files, raw lines, raw files."""
    import gzip

    decoder = msgspec.json.Decoder(_Line)
    ids: set[str] = set()
    lines = files = 0
    for f in sorted((lake / "raw").rglob("*")):
        name = f.name
        if not f.is_file() or name.startswith((".", "_")):
            continue
        if name.endswith(".jsonl.gz"):
            data = gzip.decompress(f.read_bytes())
        elif name.endswith(".jsonl"):
            data = f.read_bytes()
        else:
            continue
        files += 1
        for r in decoder.decode_lines(data):
            ids.add(r.reading_id)
            lines += 1
    return ids, lines, files


def aggregate_count(lake: Path) -> tuple[int, int]:
    decoder = msgspec.json.Decoder(_AggLine)
    total = hours = 0
    for f in sorted((lake / "aggregates" / "hourly").rglob("vehicles.jsonl")):
        hours += 1
        total += sum(r.readings for r in decoder.decode_lines(f.read_bytes()))
    return total, hours


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=3.0, metavar="SECONDS",
                    help="mean seconds between worker kills (each +-50%%)")
    ap.add_argument("--sigterm-share", type=float, default=0.2,
                    help="share of kills by SIGTERM (graceful) rather than SIGKILL")
    ap.add_argument("--min-kills", type=int, default=0,
                    help="keep killing after the load until this many kills (at most 30 s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--per-request", type=int, default=500, help="readings per request")
    ap.add_argument("--one-vehicle", action="store_true",
                    help="each request holds one vehicle's readings, so ingest attaches partial "
                    "aggregates (ADR 0006); pair with --per-request 100 to bound the buffering")
    ap.add_argument("--conns", type=int, default=8, help="client keep-alive connections")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="readings/s to post (default 0: as fast as the service takes them)")
    ap.add_argument("--resend", type=float, default=0.01,
                    help="share of accepted requests posted again (a lost response)")
    ap.add_argument("--max-attempts", type=int, default=20,
                    help="attempts per request on 429/503/connection errors")
    ap.add_argument("--batch-max-age", type=float, default=2.0,
                    help="the workers' TELEMETRY_BATCH_MAX_AGE, s")
    ap.add_argument("--visibility-timeout", type=float, default=15.0,
                    help="the queue's TELEMETRY_VISIBILITY_TIMEOUT, s")
    ap.add_argument("--drain-timeout", type=float, default=600.0,
                    help="seconds the final drain may take")
    ap.add_argument("--data-dir", help="where the run keeps its data (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.readings, args.workers, args.kill_every, args.sigterm_share = 4000, 2, 1.5, 0.5
        args.min_kills = 2
        args.vehicles, args.per_request, args.conns, args.rate = 100, 100, 4, 800.0
        args.batch_max_age, args.visibility_timeout, args.resend = 0.5, 2.0, 0.05
        args.drain_timeout = 60.0
    began = time.monotonic()
    load_before = os.getloadavg()
    root = scratch_dir(args.data_dir, "bench-soak-")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = telemetry_env(data, TELEMETRY_BATCH_MAX_AGE=str(args.batch_max_age),
                        TELEMETRY_VISIBILITY_TIMEOUT=str(args.visibility_timeout))
    key = create_key(data)
    port = free_port()
    server = subprocess.Popen([str(BIN / "telemetry"), "serve", "--port", str(port)], env=env)
    workers: Workers | None = None
    done = threading.Event()
    killer: threading.Thread | None = None
    try:
        wait_http(port)
        workers = Workers(env, root / "workers", args.workers, args.seed)
        killer = threading.Thread(
            target=chaos, args=(workers, done, args.kill_every, args.sigterm_share,
                                random.Random(args.seed + 1)), daemon=True)
        killer.start()
        bodies = fleet_bodies(args.readings, vehicles=args.vehicles,
                              per_request=args.per_request, seed=args.seed,
                              one_vehicle=args.one_vehicle)
        load = asyncio.run(_load(port, key, bodies, conns=args.conns, rate=args.rate,
                                 resend=args.resend, seed=args.seed,
                                 max_attempts=args.max_attempts))
        # A run too short for the kills it asked for goes on killing while the queue drains.
        until = time.monotonic() + 30
        while (sum(workers.kills.values()) < args.min_kills and killer.is_alive()
               and time.monotonic() < until):
            time.sleep(0.1)
        done.set()
        killer.join()
        killer = None
        drain_began = time.monotonic()
        left = queue_depth(data)
        drained = wait_drained(data, workers, args.drain_timeout,
                               args.visibility_timeout + args.batch_max_age + 5)
        workers.stop_all()
        drain_s = time.monotonic() - drain_began
        agg_began = time.monotonic()
        agg = subprocess.run([str(BIN / "telemetry"), "aggregate"], env=env,
                             capture_output=True, text=True, check=False)
        aggregate_s = time.monotonic() - agg_began
    finally:
        done.set()
        if killer is not None:
            killer.join()
        if workers is not None:
            workers.close()
        stop(server)

    lake = data / "lake"
    stored, raw_lines, raw_files = raw_ids(lake)
    counted, agg_hours = aggregate_count(lake)
    accepted = load.accepted
    lost_ids = accepted - stored
    lost = len(lost_ids)
    unexpected = len(stored - accepted)
    dead = dead_letters(env)
    dead_ids: set[str] = set()
    dead_readings = 0
    for body in dead or []:
        with contextlib.suppress(Exception):
            part = unpack(body, "")
            dead_readings += part.readings
            dead_ids.update(r.reading_id for r in msgspec.json.Decoder(_Line).decode_lines(
                part.payload))
    wall = time.monotonic() - began
    ok = lost == 0 and counted == len(accepted)
    result: dict[str, Any] = {
        "readings_generated": load.readings_generated,
        "requests": load.requests,
        "readings_posted": load.readings_posted,
        "resent_requests": load.resent_requests,
        "accepted_in_202": load.accepted_in_202,
        "accepted_distinct": len(accepted),
        "failed_attempts": dict(sorted(load.failures.items())),
        "retried_attempts": load.retried_attempts,
        "rejected_requests_not_retried": load.rejected_requests,
        "rejected_readings": load.rejected_readings,
        "given_up_requests": load.given_up_requests,
        "given_up_readings": load.given_up_readings,
        "resend_id_mismatches": load.resend_id_mismatches,
        "id_count_mismatches": load.id_count_mismatches,
        "raw_files": raw_files,
        "partials_objects": len(list((lake / "partials").rglob("*.jsonl"))),
        "raw_lines": raw_lines,
        "stored_distinct": len(stored),
        "duplicates_in_raw": raw_lines - len(stored),
        "aggregate_hours": agg_hours,
        "counted_in_aggregates": counted,
        "counted_equals_accepted": counted == len(accepted),
        "lost": lost,
        "lost_in_dead_letters": len(lost_ids & dead_ids),
        "unexpected": unexpected,
        "dead_letter_messages": "unknown" if dead is None else len(dead),
        "dead_letter_readings": dead_readings,
        "queue_left_at_load_end": left,
        "queue_drained": drained,
        "aggregate_exit": agg.returncode,
        "workers": args.workers,
        "workers_started": workers.started if workers else 0,
        "kills_sigkill": workers.kills["SIGKILL"] if workers else 0,
        "kills_sigterm": workers.kills["SIGTERM"] if workers else 0,
        "kills_before_first_file": workers.before_first_file if workers else 0,
        "kill_rounds_skipped_none_up": workers.skipped if workers else 0,
        "unexpected_worker_exits": workers.unexpected_exits[:10] if workers else [],
        "worker_log_problems": workers.log_problems() if workers else {},
        "load_s": round(load.seconds, 1),
        "drain_s": round(drain_s, 1),
        "aggregate_s": round(aggregate_s, 1),
        "wall_s": round(wall, 1),
        "accepted_per_s_under_load": round(load.accepted_in_202 / max(load.seconds, 1e-9)),
        "end_to_end_readings_per_s": round(len(stored) / max(wall, 1e-9)),
        "client_peak_rss_mib": round(peak_rss_kib() / 1024),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "ok": ok,
    }
    if agg.returncode != 0:
        print(f"soak: telemetry aggregate failed:\n{agg.stderr[-2000:]}", file=sys.stderr)
    if ok and not args.data_dir and not result["unexpected_worker_exits"]:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["data_dir"] = str(root)
        if lost:
            result["lost_sample"] = sorted(lost_ids)[:5]
    emit("soak", result, args.json)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
