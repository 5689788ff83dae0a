"""Poison messages and the dead-letter queue, with real processes, on SQLite and on SQS (the
moto server): a running `telemetry worker` stores the healthy messages and lets an undecodable
one dead-letter after max receives; `telemetry dlq list` shows the dead letters without
consuming them; `telemetry dlq redrive` moves them back, where the healthy one (dead-lettered
by a worker that kept crashing) is stored and the poison one dead-letters again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from telemetry.adapters.clock import SystemClock
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.readings import Reading, ReadingRules
from tests.e2e.conftest import Pipeline
from tests.e2e.test_faults_storage import events, stored_ids
from tests.support import moto as moto_server
from tests.support.ingest import SyncIngest
from tests.support.roles import Queue

pytestmark = pytest.mark.e2e

MAX_RECEIVES = 2
POISON = b"not an envelope\n\xff"


@pytest.fixture(params=["sqlite", "sqs"])
def queue(request: pytest.FixtureRequest, pipeline: Pipeline) -> Iterator[Queue]:
    """The test's own handle on the queue the worker and the CLI are configured for."""
    pipeline.env.update(TELEMETRY_MAX_RECEIVES=str(MAX_RECEIVES),
                        TELEMETRY_VISIBILITY_TIMEOUT="1")
    if request.param == "sqlite":
        data = pipeline.data_dir / "data"
        data.mkdir(parents=True)
        q = SqliteQueue(data / "queue.sqlite3", visibility_timeout=1, max_receives=MAX_RECEIVES)
        yield q
        q.close()
        return
    with moto_server.aws_target("moto_server") as aws:
        q = aws.queue(visibility_timeout=1, max_receives=MAX_RECEIVES)
        pipeline.env.update(moto_server.server_env({}), TELEMETRY_QUEUE="sqs",
                            TELEMETRY_SQS_QUEUE_URL=q.queue_url)
        yield q


def send_reading(queue: Queue, vehicle: str) -> str:
    r = Reading(vehicle, datetime.now(UTC), {"Vehicle.Speed": 3.0})
    return SyncIngest(queue, SystemClock(), ReadingRules()).execute([r], None).reading_ids[0]


def dlq_list(p: Pipeline) -> list[dict[str, object]]:
    out = p.cli("dlq", "list")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def wait_until(what: str, cond: Callable[[], bool], p: Pipeline, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}:\n{p.log('worker')}"
        time.sleep(0.2)


def test_poison_dead_letters_and_dlq_list_and_redrive(pipeline: Pipeline, queue: Queue) -> None:
    q, lake = queue, pipeline.data_dir / "data" / "lake"
    # A healthy message that a worker crashing before every delete never got through.
    crashed = send_reading(q, "car-crashed")
    for _ in range(MAX_RECEIVES):
        (m,) = q.receive(10, 1)
        q.change_visibility([m.receipt], 0)  # as if its timeout ran out
    assert q.receive(10) == []  # received max receives times: now a dead letter

    q.send([POISON])
    healthy = send_reading(q, "car-healthy")
    pipeline.start("worker", log_name="worker")
    wait_until("the healthy reading stored", lambda: stored_ids(lake) == [healthy], pipeline)
    wait_until("the poison dead-lettered", lambda: len(q.dead_letters(10)) == 2, pipeline)
    assert len(events(pipeline, "poison_message")) == MAX_RECEIVES

    listed = dlq_list(pipeline)  # a look, not a consumption
    assert len(listed) == 2
    # SQS counts the dead-letter queue's own receives (`dlq list` is one) on top.
    assert all(int(str(row["receive_count"])) >= MAX_RECEIVES for row in listed)
    assert "not an envelope" in {row["head"] for row in listed}
    assert all({"message_id", "bytes"} <= set(row) for row in listed)

    out = pipeline.cli("dlq", "redrive")
    assert out.returncode == 0, out.stderr
    assert "redrove 2 message(s)" in out.stdout
    wait_until("the redriven reading stored",
               lambda: stored_ids(lake) == sorted([healthy, crashed]), pipeline)
    wait_until("the poison dead-lettered again", lambda: len(q.dead_letters(10)) == 1, pipeline)
    (again,) = q.dead_letters(10)
    assert again.body == POISON
    assert pipeline.stop(pipeline.procs[0]) == 0
