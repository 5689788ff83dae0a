"""What the benchmarks share: synthetic fleet data, the lake storage, medians, RSS."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from telemetry.domain.readings import Record, encode_record

COOLANT = "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
SIGNALS = (
    "Vehicle.Speed",
    RPM,
    COOLANT,
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.IsMoving",
)
NUMERIC = SIGNALS[:5]
# A fixed start keeps the lake benchmarks reproducible; ingest data is stamped near "now".
LAKE_START = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


def signals(rng: random.Random) -> dict[str, Any]:
    """The six signals `telemetry simulate` sends: five numbers (one an int) and a bool."""
    speed = rng.uniform(0, 140)
    return {
        "Vehicle.Speed": round(speed, 2),
        RPM: 750 + int(speed * 17),
        COOLANT: round(rng.uniform(15, 90), 1),
        "Vehicle.CurrentLocation.Latitude": round(48.1 + rng.uniform(-0.05, 0.05), 7),
        "Vehicle.CurrentLocation.Longitude": round(11.5 + rng.uniform(-0.05, 0.05), 7),
        "Vehicle.IsMoving": speed > 0.5,
    }


def wire_readings(
    n: int, *, vehicles: int, start: datetime, seed: int = 1, run: int = 1
) -> Iterator[dict[str, Any]]:
    """Readings as a client posts them, 1 ms apart from `start`, round-robin over vehicles,
    `run` readings of a vehicle at a time."""
    rng = random.Random(seed)
    for i in range(n):
        ts = start + timedelta(milliseconds=i)
        yield {
            "vehicle_id": f"veh-{i // run % vehicles:05d}",
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "signals": signals(rng),
        }


def request_bodies(
    n: int, per_request: int, *, vehicles: int, start: datetime, one_vehicle: bool = False
) -> list[bytes]:
    """`{"readings": [...]}` JSON bodies of `per_request` readings each: of as many vehicles
    (a gateway, `telemetry simulate`), or of one (a vehicle posting its own buffer)."""
    enc = msgspec.json.Encoder()
    out: list[bytes] = []
    batch: list[dict[str, Any]] = []
    run = per_request if one_vehicle else 1
    for r in wire_readings(n, vehicles=vehicles, start=start, run=run):
        batch.append(r)
        if len(batch) == per_request:
            out.append(enc.encode({"readings": batch}))
            batch = []
    if batch:
        out.append(enc.encode({"readings": batch}))
    return out


def write_lake(
    root: Path,
    *,
    readings: int,
    hours: int,
    vehicles: int,
    files: int,
    duplicates: float = 0.01,
    seed: int = 7,
) -> int:
    """A raw lake as the worker writes it: `files` files spread evenly over `hours` hours,
    readings spread over each hour, and a share of them stored twice (at-least-once), the copy
    in another file of the same hour. Returns the number of lines written."""
    rng = random.Random(seed)
    per_hour = readings // hours
    files_per_hour = max(1, files // hours)
    lines = 0
    for h in range(hours):
        hour = LAKE_START + timedelta(hours=h)
        part = [bytearray() for _ in range(files_per_hour)]
        received = hour + timedelta(hours=1, minutes=1)
        for i in range(per_hour):
            ts = hour + timedelta(microseconds=rng.randrange(3_600_000_000))
            rid = f"{h:02d}-{i:08d}"
            line = encode_record(
                Record(rid, f"veh-{i % vehicles:05d}", ts, received, signals(rng))
            ) + b"\n"
            f = i * files_per_hour // per_hour
            part[f] += line
            lines += 1
            if rng.random() < duplicates:
                part[(f + 1) % files_per_hour] += line
                lines += 1
        folder = root / "raw" / f"year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        for f, data in enumerate(part):
            (folder / f"bench-{f:03d}.jsonl").write_bytes(bytes(data))
    return lines


def write_ingested_lake(
    root: Path,
    *,
    readings: int,
    hours: int,
    vehicles: int,
    files: int,
    per_request: int = 100,
    resend: float = 0.01,
    seed: int = 7,
) -> int:
    """A raw lake made the way the service makes it: each vehicle posts its own readings,
    `per_request` at a time, through ingest's use case into a queue, and the worker's use case
    drains it into `files` files over `hours` hours (with the partials it keeps). A share of
    the requests is sent twice, as a client does when a 202 was lost. Returns the number of
    lines written."""
    from tests.support.fakes import FakeClock
    from tests.support.ingest import SyncIngest

    from telemetry.adapters.memory import MemoryQueue
    from telemetry.domain.batching import BatchPolicy
    from telemetry.domain.drain import DrainBatches
    from telemetry.domain.readings import Reading, ReadingRules

    rng = random.Random(seed)
    clock = FakeClock(LAKE_START + timedelta(hours=hours, minutes=1))
    queue = MemoryQueue(max_message_bytes=256 * 1024)
    storage = lake_storage(root)
    per_file = readings // files * 21 // 20  # room for the re-sent requests: `files` files
    drain = DrainBatches(queue, storage, clock, BatchPolicy(
        max_readings=per_file, max_bytes=1 << 40, max_age_seconds=1e9, max_open_hours=hours))
    accept = SyncIngest(queue, clock, ReadingRules())
    per_vehicle_hour = readings // hours // vehicles
    lines = 0
    for h in range(hours):
        hour = LAKE_START + timedelta(hours=h)
        for v in range(vehicles):
            stamps = sorted(rng.randrange(3_600_000_000) for _ in range(per_vehicle_hour))
            for a in range(0, len(stamps), per_request):
                body = [Reading(f"veh-{v:05d}", hour + timedelta(microseconds=t), signals(rng))
                        for t in stamps[a : a + per_request]]
                for _ in range(2 if rng.random() < resend else 1):
                    accept.execute(body, None)
                    lines += len(body)
            while drain.poll(0).received:
                pass
    drain.flush_all()
    return lines


class _DirStorage:
    """The Storage port over a directory, for trees where the filesystem adapter is not there
    yet: whole-file atomic writes (temp file, fsync, rename), sorted listing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        from telemetry.domain.errors import NotFound

        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(key) from exc

    def list(self, prefix: str) -> list[str]:
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix))

    def check(self) -> None:
        return None


def lake_storage(root: Path) -> Any:
    """The filesystem lake adapter the CLI uses (a stand-in where it is not there yet)."""
    try:
        from telemetry.adapters.filesystem import FilesystemStorage
    except ImportError:
        print("note: telemetry.adapters.filesystem missing; using bench's _DirStorage",
              file=sys.stderr)
        return _DirStorage(root)
    return FilesystemStorage(root)


def scratch_dir(given: str | None, prefix: str) -> Path:
    if given:
        p = Path(given)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return Path(tempfile.mkdtemp(prefix=prefix))


def rss_kib(pid: int | None = None) -> int:
    """Resident set size now, from /proc (Linux)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int | None = None) -> int:
    """High-water mark of the resident set (VmHWM)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--tiny", action="store_true", help="smoke-test size (CI), no timing claims")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    return ap


def emit(name: str, result: dict[str, Any], as_json: bool) -> None:
    result = {"bench": name, "python": platform.python_version(), **result}
    if as_json:
        print(json.dumps(result, default=str))
        return
    for k, v in result.items():
        print(f"{k:>34}: {v:,.1f}" if isinstance(v, float) else f"{k:>34}: {v}")
    sys.stdout.flush()


# A bare ASGI app on the same uvicorn stack as ours (uvloop, httptools): reads the body and
# answers 202 with a body the size of ours for BARE_READINGS readings (ids of 32 hex digits).
BARE_APP = '''
import os
N = int(os.environ["BARE_READINGS"])
BODY = (b'{"accepted":%d,"reading_ids":[' % N + b",".join([b'"' + b"0" * 32 + b'"'] * N)
        + b"]}")
LENGTH = str(len(BODY)).encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 202 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", LENGTH)]})
    await send({"type": "http.response.body", "body": BODY})
'''


def start_bare_app(root: Path, host: str, port: int, readings: int) -> subprocess.Popen[bytes]:
    """`BARE_APP` served from `root` on host:port, answering as ours does to `readings`."""
    (root / "bare_app.py").write_text(BARE_APP)
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bare_app:app", "--host", host, "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
         "warning"], cwd=root, env={**os.environ, "BARE_READINGS": str(readings)})


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Median CPU seconds (all threads of this process) per call over 3 rounds."""
    rounds = []
    for _ in range(3):
        t = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - t) / calls)
    return median(rounds)
