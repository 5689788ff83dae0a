"""The lake becomes unwritable under a running `telemetry worker`, then writable again: the
worker keeps the messages, logs the episode once, and stores every enqueued reading by itself
when the fault clears. The outage outlasts max receives x visibility timeout, so a worker that
let its held messages come back would dead-letter healthy readings."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.e2e.test_shutdown import enqueue  # what ingest does before it answers 202

pytestmark = pytest.mark.e2e

VT = 1.5
MAX_RECEIVES = 2


def stored_ids(lake: Path) -> list[str]:
    raw = lake / "raw"
    if not raw.is_dir():
        return []
    return sorted(
        json.loads(line)["reading_id"]
        for f in raw.rglob("*.jsonl")
        for line in f.read_text().splitlines()
    )


def queue_counts(data: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(data / "queue.sqlite3", timeout=10)) as db:
        live = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return int(live), int(dead)


def visible_now(data: Path) -> int:
    """Messages another consumer could receive now."""
    with closing(sqlite3.connect(data / "queue.sqlite3", timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE visible_at <= ?",
                              (time.time(),)).fetchone()[0])


def events(p: Pipeline, name: str) -> list[dict[str, object]]:
    out = []
    for line in p.log("worker").splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == name:
                out.append(doc)
    return out


def wait_for(what: str, cond, p: Pipeline, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}:\n{p.log('worker')}"
        assert all(proc.poll() is None for proc in p.procs), p.log("worker")
        time.sleep(0.1)


def post(p: Pipeline, key: str, vehicle: str, n: int) -> list[str]:
    now = datetime.now(UTC)
    readings = [
        {"vehicle_id": vehicle, "ts": (now - timedelta(seconds=i)).isoformat(),
         "signals": {"Vehicle.Speed": float(i)}}
        for i in range(n)
    ]
    r = httpx.post(p.url + "/v1/readings", json={"readings": readings},
                   headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 202, r.text
    return list(r.json()["reading_ids"])


def test_an_unwritable_lake_is_one_fault_episode_and_loses_nothing(pipeline: Pipeline) -> None:
    pipeline.env.update(TELEMETRY_VISIBILITY_TIMEOUT=str(VT),
                        TELEMETRY_MAX_RECEIVES=str(MAX_RECEIVES))
    data = pipeline.data_dir / "data"
    lake = data / "lake"
    ids = enqueue(data, n_hours=1)
    pipeline.start("worker", log_name="worker")
    wait_for("the first readings stored", lambda: stored_ids(lake) == sorted(ids), pipeline)

    # raw/ becomes a regular file: every write under it fails, even for root.
    shutil.move(lake / "raw", lake / "raw.saved")
    (lake / "raw").write_bytes(b"")
    ids += enqueue(data, n_hours=3, per_hour=20)
    wait_for("a fault line", lambda: events(pipeline, "fault"), pipeline)
    # Longer than max receives x visibility timeout, sampled throughout: held, not deleted,
    # not dead-lettered, and kept invisible all along.
    samples = set()
    until = time.monotonic() + MAX_RECEIVES * VT + 1
    while time.monotonic() < until:
        samples.add((*queue_counts(data), visible_now(data)))
        time.sleep(0.2)
    assert samples == {(3, 0, 0)}, pipeline.log("worker")

    (lake / "raw").unlink()
    shutil.move(lake / "raw.saved", lake / "raw")
    wait_for("every reading stored after recovery",
             lambda: stored_ids(lake) == sorted(ids), pipeline, timeout=40)
    wait_for("the queue emptied", lambda: queue_counts(data) == (0, 0), pipeline)
    # Logged when the poll that retried the writes returns (after its receive).
    wait_for("a recovered line", lambda: events(pipeline, "recovered"), pipeline)

    (fault,) = events(pipeline, "fault")  # one line for the whole episode...
    assert "cannot write" in str(fault["error"]) and fault["level"] == "error"
    assert len(events(pipeline, "recovered")) == 1  # ...and one when it was over
    assert events(pipeline, "poison_message") == []
    assert pipeline.stop(pipeline.procs[0]) == 0
