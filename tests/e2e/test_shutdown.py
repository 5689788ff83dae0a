"""SIGTERM to a real `telemetry worker` holding open batches: within the deadline it stores,
deletes and exits 0; with a failing lake it gives up before the deadline and exits 1; with a
lake that never answers the deadline stops it (exit 1). In both failures nothing it did not
store is deleted, and the next worker stores every reading."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from telemetry.adapters.clock import SystemClock
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.entrypoints.local_aws import FAKE_CREDENTIALS
from tests.e2e.conftest import Pipeline
from tests.support.ingest import SyncIngest

pytestmark = pytest.mark.e2e

VT = 2.0


def enqueue(data: Path, n_hours: int = 3, per_hour: int = 5) -> list[str]:
    """What ingest does after a 202, straight into the queue file: one message per hour.

    Each hour's readings lie in the first half of an hour wholly in the past, so they never
    straddle an hour boundary (`now - i s` did in the first seconds of an hour: two messages).
    The offset into that hour follows the clock, so each call gives new readings and ids."""
    assert per_hour <= 1800
    data.mkdir(parents=True, exist_ok=True)
    queue = SqliteQueue(data / "queue.sqlite3", visibility_timeout=VT)
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)
    accept = SyncIngest(queue, SystemClock(), ReadingRules())
    ids: list[str] = []
    try:
        for h in range(n_hours):
            start = top - timedelta(hours=h + 1) + (now - top) / 2
            readings = [
                Reading(f"car-{i}", start + timedelta(seconds=i), {"x": i}) for i in range(per_hour)
            ]
            ids += accept.execute(readings, None).reading_ids
    finally:
        queue.close()
    return ids


def queue_rows(data: Path) -> list[tuple[int, float]]:
    """(receive count, visible_at) of every live message."""
    with closing(sqlite3.connect(data / "queue.sqlite3", timeout=10)) as db:
        return [(int(c), float(v)) for c, v in
                db.execute("SELECT receive_count, visible_at FROM messages ORDER BY id")]


def stored_ids(lake: Path) -> list[str]:
    return sorted(json.loads(line)["reading_id"] for f in (lake / "raw").rglob("*.jsonl")
                  for line in f.read_text().splitlines())


def received_by_worker(p: Pipeline, data: Path, n: int) -> None:
    deadline = time.monotonic() + 30
    while sum(1 for c, _ in queue_rows(data) if c > 0) < n:
        assert time.monotonic() < deadline, p.log("worker")
        assert p.procs[-1].poll() is None, p.log("worker")
        time.sleep(0.05)


def sigterm(p: Pipeline) -> tuple[int, float]:
    proc = p.procs[-1]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    return code, time.monotonic() - t0


def log_events(p: Pipeline) -> list[str]:
    return [json.loads(line)["event"] for line in p.log("worker").splitlines()
            if line.startswith("{")]


def next_worker_stores_everything(p: Pipeline, ids: list[str], lake: Path) -> None:
    p.env.update(TELEMETRY_STORAGE="filesystem", TELEMETRY_BATCH_MAX_AGE="0.1")
    p.env.pop("TELEMETRY_S3_BUCKET", None)  # set without the s3 storage, it stops the worker
    out = p.cli("worker", "--once")
    assert out.returncode == 0, out.stderr
    assert stored_ids(lake) == sorted(ids)
    assert queue_rows(p.data_dir / "data") == []


@pytest.fixture
def held(pipeline: Pipeline) -> tuple[Pipeline, list[str]]:
    """A worker holding three open batches (one per hour) that would wait a minute more."""
    pipeline.env.update(TELEMETRY_VISIBILITY_TIMEOUT=str(VT), TELEMETRY_BATCH_MAX_AGE="60",
                        TELEMETRY_SHUTDOWN_DEADLINE="3")
    ids = enqueue(pipeline.data_dir / "data")
    pipeline.start("worker", log_name="worker")
    received_by_worker(pipeline, pipeline.data_dir / "data", 3)
    return pipeline, ids


def test_sigterm_flushes_deletes_and_exits_0(held) -> None:
    p, ids = held
    lake = p.data_dir / "data" / "lake"
    time.sleep(VT)  # the held batches outlive a visibility timeout: the worker extends them
    assert stored_ids(lake) == []
    code, took = sigterm(p)
    assert code == 0, p.log("worker")
    assert took < 3
    assert stored_ids(lake) == sorted(ids)
    assert queue_rows(p.data_dir / "data") == []
    assert log_events(p)[-2:] == ["file_written", "worker_stopped"]


def test_a_failing_lake_at_shutdown_gives_up_before_the_deadline_and_deletes_nothing(
    held,
) -> None:
    p, ids = held
    lake = p.data_dir / "data" / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    (lake / "raw").write_bytes(b"")  # a file where raw/ should be: every write fails, for root too
    code, took = sigterm(p)
    assert code == 1, p.log("worker")
    assert took < 3 + 1  # gave up by itself, before the deadline's hard stop
    events = log_events(p)
    assert "final_flush_failed" in events and "shutdown_deadline_passed" not in events
    rows = queue_rows(p.data_dir / "data")
    assert len(rows) == 3 and all(c == 1 for c, _ in rows)  # nothing deleted
    assert all(v <= time.time() for _, v in rows)  # given back: visible at once
    (lake / "raw").unlink()
    next_worker_stores_everything(p, ids, lake)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: a lake that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        t.join(timeout=5)
        for c in conns:
            c.close()
        server.close()


def test_a_hanging_lake_is_cut_off_at_the_deadline_and_its_messages_come_back(
    pipeline: Pipeline, black_hole: str
) -> None:
    pipeline.env.update(
        FAKE_CREDENTIALS, AWS_ENDPOINT_URL=black_hole, TELEMETRY_STORAGE="s3",
        TELEMETRY_S3_BUCKET="lake", TELEMETRY_VISIBILITY_TIMEOUT=str(VT),
        TELEMETRY_BATCH_MAX_AGE="0.1", TELEMETRY_SHUTDOWN_DEADLINE="2",
    )
    data = pipeline.data_dir / "data"
    ids = enqueue(data)
    pipeline.start("worker", log_name="worker")
    received_by_worker(pipeline, data, 3)
    time.sleep(0.5)  # the first PutObject is on the wire, waiting for an answer
    code, took = sigterm(pipeline)
    assert code == 1, pipeline.log("worker")
    assert 2 <= took < 4
    assert "shutdown_deadline_passed" in log_events(pipeline)
    assert len(queue_rows(data)) == 3  # nothing deleted
    time.sleep(VT)  # not extended any more: they come back after the visibility timeout
    next_worker_stores_everything(pipeline, ids, data / "lake")
