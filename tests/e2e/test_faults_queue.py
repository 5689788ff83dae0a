"""Queue faults under real `telemetry serve` and `telemetry worker` processes.

- SQLite: another process holds the queue's write lock longer than the busy timeout while the
  worker holds a batch; the worker logs one fault, backs off and resumes. (The ingest side,
  503 with Retry-After within TELEMETRY_ENQUEUE_TIMEOUT, is tests/e2e/test_ingest_statuses.py.)
- SQS: the endpoint first answers every call with SQS's throttling error, then refuses
  connections, then comes back (a small proxy in front of the moto server). Ingest answers
  503 with Retry-After within TELEMETRY_ENQUEUE_TIMEOUT throughout, the worker logs the whole
  outage as one episode, and every reading answered 202 is stored.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from telemetry.adapters.sqs import QueueSpec, ensure_queue
from tests.e2e.conftest import Pipeline
from tests.e2e.faulty_endpoint import FaultyEndpoint
from tests.e2e.test_faults_storage import events, post, stored_ids, wait_for
from tests.e2e.test_shutdown import enqueue
from tests.support import moto as moto_server

pytestmark = pytest.mark.e2e


def received(data: Path) -> int:
    with closing(sqlite3.connect(data / "queue.sqlite3", timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE receive_count > 0")
                   .fetchone()[0])


def test_a_locked_sqlite_queue_is_one_fault_episode_for_the_worker(pipeline: Pipeline) -> None:
    """The lock is taken while the worker holds a batch: the file is stored, the delete
    waits out the busy timeout and fails; once the lock is gone only the delete is retried."""
    pipeline.env["TELEMETRY_BATCH_MAX_AGE"] = "2"
    data = pipeline.data_dir / "data"
    ids = enqueue(data, n_hours=1)
    pipeline.start("worker", log_name="worker")
    wait_for("received", lambda: received(data) == 1, pipeline)
    holder = sqlite3.connect(data / "queue.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a backup, a stuck process: the write lock is taken
    try:
        # An operator's redrive meanwhile fails cleanly after the busy timeout, exit 1.
        redrive = pipeline.cli("dlq", "redrive")
        assert redrive.returncode == 1, redrive.stderr
        assert "queue unavailable, run it again" in redrive.stderr
        assert "Traceback" not in redrive.stderr
        wait_for("a fault line", lambda: events(pipeline, "fault"), pipeline, timeout=15)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ids += enqueue(data, n_hours=1)
    wait_for("stored after the lock", lambda: stored_ids(data / "lake") == sorted(ids), pipeline)
    wait_for("a recovered line", lambda: events(pipeline, "recovered"), pipeline)
    (fault,) = events(pipeline, "fault")
    assert "SQLite queue" in str(fault["error"])
    assert len(events(pipeline, "recovered")) == 1
    # the second file is logged once its step ends, which may be after the checks above
    wait_for("two files", lambda: len(events(pipeline, "file_written")) >= 2, pipeline)
    assert len(events(pipeline, "file_written")) == 2  # the first file was not written again


# ------------------------------------------------------------------ SQS


def timed_post(p: Pipeline, key: str, vehicle: str) -> tuple[httpx.Response, float]:
    reading = {"vehicle_id": vehicle, "ts": datetime.now(UTC).isoformat(),
               "signals": {"Vehicle.Speed": 1.0}}
    t0 = time.monotonic()
    r = httpx.post(p.url + "/v1/readings", json={"readings": [reading]},
                   headers={"X-API-Key": key}, timeout=30)
    return r, time.monotonic() - t0


def test_sqs_throttled_then_unreachable_then_back(
    pipeline: Pipeline, endpoint: FaultyEndpoint
) -> None:
    pipeline.env.update(moto_server.server_env({}))
    with moto_server.aws_target("moto_server") as aws:
        made = ensure_queue(QueueSpec(moto_server.unique("faults"), visibility_timeout=5),
                           client=aws.client("sqs"))
    pipeline.env.update(
        AWS_ENDPOINT_URL=endpoint.url, TELEMETRY_QUEUE="sqs",
        TELEMETRY_SQS_QUEUE_URL=made.url, TELEMETRY_ENQUEUE_TIMEOUT="2",
    )
    lake = pipeline.data_dir / "data" / "lake"
    key = pipeline.create_key()
    # The worker hears of the fault on its first throttled answer; ingest keeps botocore's
    # default retries, whose time the enqueue timeout must bound.
    pipeline.env["AWS_MAX_ATTEMPTS"] = "1"
    pipeline.start("worker", log_name="worker")
    del pipeline.env["AWS_MAX_ATTEMPTS"]
    pipeline.serve()
    ids = post(pipeline, key, "car-1", 3)
    wait_for("stored", lambda: stored_ids(lake) == sorted(ids), pipeline)

    endpoint.mode = "throttle"
    for _ in range(2):
        r, took = timed_post(pipeline, key, "car-2")
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert took < 2 + 1  # TELEMETRY_ENQUEUE_TIMEOUT, whatever botocore's retries take
    wait_for("a fault line from the worker", lambda: events(pipeline, "fault"), pipeline,
             timeout=20)
    assert endpoint.throttled > 0

    endpoint.down()  # connections refused
    r, took = timed_post(pipeline, key, "car-3")
    assert r.status_code == 503 and took < 2 + 1, r.text
    time.sleep(1)

    endpoint.up()
    deadline = time.monotonic() + 20
    while True:  # a client retrying on 503, as `telemetry simulate` does
        r, _ = timed_post(pipeline, key, "car-4")
        if r.status_code == 202:
            ids += r.json()["reading_ids"]
            break
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.5)
    ids += post(pipeline, key, "car-5", 3)
    # A 503 may still have enqueued (at-least-once): stored ids may include those readings.
    wait_for("every 202 stored", lambda: set(ids) <= set(stored_ids(lake)), pipeline,
             timeout=40)
    wait_for("a recovered line", lambda: events(pipeline, "recovered"), pipeline)
    assert len(events(pipeline, "fault")) == 1  # throttled, then refused: one episode
    assert len(events(pipeline, "recovered")) == 1
