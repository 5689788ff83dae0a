"""The worker SIGKILLed at chosen points (tests/support/crash.py), then restarted: every reading
answered 202 is in the lake, no partial file is visible, and aggregates count each reading once.
The SQLite queue passes `PRAGMA integrity_check` after every kill.

The queue is loaded once per module through `telemetry serve` (the ledger is the reading ids of
its 202 answers) and copied into each test with SQLite's backup API, which saves a serve and a
key store per test.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.adapters.filesystem import _WRITE_CHUNK, FilesystemStorage
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import Settings, load_settings
from tests.e2e.conftest import Pipeline
from tests.support import crash

pytestmark = pytest.mark.e2e

VISIBILITY = 1.0  # seconds until a dead worker's messages come back


# ---------------------------------------------------------------- helpers shared by the crash tests


def crash_seed() -> int:
    """The seed of a test's random kill moments: printed (pytest shows it on failure) and taken
    from CRASH_SEED when set, to rerun about the same moments (timing still varies)."""
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 32))
    print(f"CRASH_SEED={seed}")
    return seed


def crash_env(env: dict[str, str], visibility: float = VISIBILITY) -> dict[str, str]:
    return {**env, "TELEMETRY_VISIBILITY_TIMEOUT": str(visibility)}


def readings_for(hour: datetime, n: int, *, vehicles: int = 3, pad: int = 0) -> list[dict]:
    """`n` readings inside `hour`; `pad` string signals of 200 chars make each ~`pad` * 220 B."""
    out = []
    for i in range(n):
        signals: dict[str, object] = {"Vehicle.Speed": float(i % 90), "Vehicle.IsOn": i % 2 == 0}
        signals.update({f"Vehicle.Note{j}": f"{i:06d}" + "x" * 194 for j in range(pad)})
        ts = hour + timedelta(seconds=(i * 3600) // n)
        out.append({"vehicle_id": f"car-{i % vehicles}", "ts": ts.isoformat(), "signals": signals})
    return out


def make_key(p: Pipeline) -> str:
    """What `telemetry keys create` does, in this process: one process start less per test."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    stored = new_stored_key(key_id, secret, "crash", ["*"], datetime.now(UTC))
    FileApiKeyStore(p.data_dir / "data" / "keys.json").add(stored)
    return format_key(key_id, secret)


def post_all(url: str, key: str, readings: list[dict], per_request: int) -> list[str]:
    """The ledger: reading ids of the 202 answers."""
    ledger: list[str] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        for start in range(0, len(readings), per_request):
            chunk = readings[start : start + per_request]
            r = client.post("/v1/readings", json={"readings": chunk})
            assert r.status_code == 202, r.text
            assert len(r.json()["reading_ids"]) == len(chunk)
            ledger.extend(r.json()["reading_ids"])
    return ledger


def queue_file(p: Pipeline) -> Path:
    return p.data_dir / "data" / "queue.sqlite3"


def lake_dir(p: Pipeline) -> Path:
    return p.data_dir / "data" / "lake"


def assert_queue_intact(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def raw_files(lake: Path) -> list[Path]:
    """What a reader of the lake sees as raw files (temp names start with '.')."""
    files = (lake / "raw").rglob("*")
    return sorted(f for f in files if f.is_file() and not f.name.startswith("."))


def temp_files(lake: Path) -> list[Path]:
    return sorted(f for f in lake.rglob(".*.tmp") if f.is_file())


def raw_records(lake: Path) -> list[dict]:
    """Every line of every visible raw file; a partial file would fail to parse here."""
    out = []
    for f in raw_files(lake):
        data = f.read_text()
        assert data.endswith("\n"), f"{f} is not whole"
        out.extend(json.loads(line) for line in data.splitlines())
    return out


def _hour(text: str) -> str:
    t = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0).isoformat()


def aggregate_counts(lake: Path) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for f in (lake / "aggregates" / "hourly").rglob("vehicles.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            counts[_hour(row["hour_start"]), row["vehicle_id"]] += row["readings"]
    return counts


def check_ledger(
    p: Pipeline, ledger: list[str], *, sent: set[str] | None = None
) -> Counter[str]:
    """Every id answered 202 is in the raw files; `telemetry aggregate` counts each distinct
    id once per vehicle and hour. Returns how many times each id is stored."""
    agg = p.cli("aggregate")
    assert agg.returncode == 0, agg.stderr
    records = raw_records(lake_dir(p))
    stored = Counter(r["reading_id"] for r in records)
    assert set(ledger) - set(stored) == set(), "readings answered 202 are missing"
    if sent is None:
        assert set(stored) == set(ledger)
    else:
        assert set(stored) <= sent
    distinct: dict[tuple[str, str], set[str]] = {}
    for r in records:
        distinct.setdefault((_hour(r["ts"]), r["vehicle_id"]), set()).add(r["reading_id"])
    assert aggregate_counts(lake_dir(p)) == {k: len(v) for k, v in distinct.items()}
    return stored


def run_until_killed(p: Pipeline, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    out = p.cli(*args, crash_at=point)
    assert out.returncode == -9, out.stderr
    assert f"crashpoint {point.partition(':')[0]}" in out.stderr
    return out


def drain_after_crash(p: Pipeline) -> None:
    """What a restarted worker does: once the dead worker's claims expire, drain everything."""
    time.sleep(VISIBILITY + 0.3)
    once = p.cli("worker", "--once")
    assert once.returncode == 0, once.stderr


# ---------------------------------------------------------------- fixtures


@dataclass
class Loaded:
    queue: Path
    ledger: list[str]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """A queue holding two hours of readings, ~500 KB of lake file each: more than one
    write chunk, so `storage.mid_write` cuts the first file short."""
    base = tmp_path_factory.mktemp("loaded")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    p = Pipeline(base, {**env, "TELEMETRY_DATA_DIR": str(base / "data")})
    try:
        key = make_key(p)
        serve = p.serve()
        top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        readings = [
            *readings_for(top - timedelta(hours=2), 500, pad=4),
            *readings_for(top - timedelta(hours=1), 500, pad=4),
        ]
        ledger = post_all(p.url, key, readings, per_request=50)
        assert p.stop(serve) in (0, -15), p.log("serve")  # uvicorn re-raises SIGTERM
    finally:
        for proc in p.procs:
            if proc.poll() is None:
                proc.kill()
    assert len(set(ledger)) == 1000
    yield Loaded(queue_file(p), ledger)


@pytest.fixture
def crash_pipeline(pipeline: Pipeline, loaded: Loaded) -> Pipeline:
    pipeline.env = crash_env(pipeline.env)
    queue_file(pipeline).parent.mkdir(parents=True)
    src = sqlite3.connect(loaded.queue)
    dst = sqlite3.connect(queue_file(pipeline))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return pipeline


# ---------------------------------------------------------------- the kill points


def test_worker_killed_right_after_receive(crash_pipeline: Pipeline, loaded: Loaded) -> None:
    p = crash_pipeline
    run_until_killed(p, "worker.after_receive", "worker", "--once")
    assert raw_files(lake_dir(p)) == []  # claimed, nothing written
    assert_queue_intact(queue_file(p))
    drain_after_crash(p)
    check_ledger(p, loaded.ledger)


@pytest.mark.parametrize("point", ["storage.mid_write", "storage.before_rename"])
def test_worker_killed_while_writing_a_file(
    crash_pipeline: Pipeline, loaded: Loaded, point: str
) -> None:
    p = crash_pipeline
    lake = lake_dir(p)
    run_until_killed(p, point, "worker", "--once")
    assert raw_files(lake) == []  # the rename never happened: no file is visible
    [tmp] = temp_files(lake)
    data = tmp.read_bytes()
    if point == "storage.mid_write":
        assert len(data) == _WRITE_CHUNK and not data.endswith(b"\n")  # cut in the middle
    else:
        assert data.endswith(b"\n") and all(json.loads(x) for x in data.splitlines())
    assert_queue_intact(queue_file(p))

    drain_after_crash(p)
    check_ledger(p, loaded.ledger)  # the temp file is not counted
    # Still there (too young to tell from a write in progress), and ignored. `list` sweeps it
    # an hour on: tests/integration/test_filesystem.py shows that.
    assert temp_files(lake) == [tmp]


def test_worker_killed_after_writing_a_file_before_deleting_its_messages(
    crash_pipeline: Pipeline, loaded: Loaded
) -> None:
    p = crash_pipeline
    run_until_killed(p, "worker.after_put_before_delete", "worker", "--once")
    [first] = raw_files(lake_dir(p))
    in_first = {r["reading_id"] for r in raw_records(lake_dir(p))}
    assert in_first
    assert_queue_intact(queue_file(p))

    drain_after_crash(p)
    stored = check_ledger(p, loaded.ledger)
    # The file's messages came back and were stored again: at-least-once, counted once.
    assert in_first <= {rid for rid, n in stored.items() if n > 1}
    assert first in raw_files(lake_dir(p))


# ---------------------------------------------------------------- the hook itself


def test_the_product_wraps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The variable that once armed crash points in the product: nothing reads it any more.
    monkeypatch.setenv("TELEMETRY_TEST_CRASH_AT", "storage.mid_write")
    plain = create_container(load_settings({"TELEMETRY_DATA_DIR": str(tmp_path)}))
    assert type(plain.queue()) is SqliteQueue  # nothing wrapped: the hot path is untouched
    assert type(plain.storage()) is FilesystemStorage


def test_the_launcher_wraps_only_what_it_is_told_to(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    container = create_container(settings)
    armed = crash.parse_crash_at("storage.mid_write:3")
    crash.install(container, armed)
    assert isinstance(container.queue(), crash.CrashingQueue)
    storage = container.storage()
    assert isinstance(storage, crash.CrashingStorage)
    assert isinstance(storage._inner, crash.KillableFilesystemStorage)
    assert container.curate_hours()._step == armed.step  # curation passes its own points


@pytest.mark.parametrize("bad", ["worker.nowhere", "worker.after_receive:0", "storage.mid_write:x"])
def test_a_bad_crash_point_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="crash point"):
        crash.parse_crash_at(bad)
