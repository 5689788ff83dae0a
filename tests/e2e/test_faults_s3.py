"""S3 answers `503 SlowDown` to every PutObject under a running `telemetry worker` on SQS + S3
(a moto server behind a fault-injecting proxy), then recovers: the worker keeps its messages
(nothing deleted, nothing dead-lettered, nothing visible to another consumer), logs the episode
once, and stores every enqueued reading exactly once by itself when S3 answers again. The
outage outlasts max receives x visibility timeout, so a worker that let its held messages come
back would dead-letter healthy readings."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from telemetry.adapters.clock import SystemClock
from telemetry.adapters.s3 import ensure_bucket
from telemetry.adapters.sqs import QueueSpec, SqsQueue, ensure_queue
from telemetry.domain.readings import Reading, ReadingRules
from tests.e2e.conftest import Pipeline
from tests.e2e.faulty_endpoint import FaultyEndpoint
from tests.e2e.test_faults_storage import events, wait_for
from tests.support import moto as moto_server
from tests.support.ingest import SyncIngest

pytestmark = pytest.mark.e2e

VT = 2
MAX_RECEIVES = 2


def enqueue(queue: SqsQueue, n_hours: int, per_hour: int = 5) -> list[str]:
    """What ingest does after a 202: one SendMessageBatch, one message per hour.

    As tests/e2e/test_shutdown.py's enqueue: each hour's readings lie in the first half of an
    hour wholly in the past, so none straddles an hour boundary whatever the wall clock, and
    the offset into that hour follows the clock, so each call gives new readings and ids."""
    assert per_hour <= 1800
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)
    readings = []
    for h in range(n_hours):
        start = top - timedelta(hours=h + 1) + (now - top) / 2
        readings += [
            Reading(f"car-{i}", start + timedelta(seconds=i), {"x": i}) for i in range(per_hour)
        ]
    accepted = SyncIngest(queue, SystemClock(), ReadingRules()).execute(readings, None)
    assert accepted.messages == n_hours
    return accepted.reading_ids


def lake_ids(s3: Any, bucket: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="raw/"):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out.update(json.loads(line)["reading_id"] for line in body.decode().splitlines())
    return out


def depth(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue; moto counts them exactly."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def test_s3_slow_down_is_one_fault_episode_and_loses_nothing(
    pipeline: Pipeline, endpoint: FaultyEndpoint
) -> None:
    with moto_server.aws_target("moto_server") as aws:  # the test's own calls go to moto
        sqs, s3 = aws.client("sqs"), aws.client("s3")
        made = ensure_queue(
            QueueSpec(moto_server.unique("s3faults"), visibility_timeout=VT,
                      max_receives=MAX_RECEIVES),
            client=sqs,
        )
        bucket = moto_server.unique("lake")
        ensure_bucket(bucket, moto_server.REGION, client=s3)
        queue = SqsQueue(made.url, client=sqs)

        pipeline.env.update(moto_server.server_env({}))
        pipeline.env.update(
            AWS_ENDPOINT_URL=endpoint.url,  # the worker's SQS and S3 calls go through the proxy
            # The worker hears of the fault on its first SlowDown, not after botocore's retries.
            AWS_MAX_ATTEMPTS="1",
            TELEMETRY_QUEUE="sqs", TELEMETRY_SQS_QUEUE_URL=made.url,
            TELEMETRY_STORAGE="s3", TELEMETRY_S3_BUCKET=bucket,
        )
        ids = enqueue(queue, n_hours=1)
        worker = pipeline.start("worker", log_name="worker")
        wait_for("the first readings stored", lambda: lake_ids(s3, bucket) == Counter(ids),
                 pipeline)
        wait_for("the first message deleted", lambda: depth(sqs, made.url) == (0, 0), pipeline)

        endpoint.mode = "slowdown"
        ids += enqueue(queue, n_hours=3, per_hour=20)
        wait_for("a fault line", lambda: events(pipeline, "fault"), pipeline)
        # Longer than max receives x visibility timeout, and than the worker's 4 s back-off
        # after its 4th attempt: held, not deleted, and kept invisible all along.
        samples = []
        until = time.monotonic() + MAX_RECEIVES * VT + 2.5
        while time.monotonic() < until:
            samples.append(depth(sqs, made.url))
            time.sleep(0.2)
        assert set(samples) == {(0, 3)}, pipeline.log("worker")
        assert depth(sqs, made.dead_letter_url) == (0, 0)
        assert lake_ids(s3, bucket) == Counter(ids[:5])

        endpoint.mode = "pass"
        wait_for("every reading stored after recovery",
                 lambda: lake_ids(s3, bucket) == Counter(ids), pipeline, timeout=40)
        wait_for("the queue emptied", lambda: depth(sqs, made.url) == (0, 0), pipeline)
        # Logged when the poll that retried the writes returns (after its receive).
        wait_for("a recovered line", lambda: events(pipeline, "recovered"), pipeline)
        assert depth(sqs, made.dead_letter_url) == (0, 0)
        assert pipeline.stop(worker) == 0, pipeline.log("worker")

    assert len(set(ids)) == len(ids)  # so the lake held each reading exactly once
    # The proxy's view: PUTs refused, and no DeleteMessage* from the first SlowDown until a PUT
    # went through again.
    calls = list(endpoint.calls)
    refused = [c.at for c in calls if c.status == 503]
    assert endpoint.slowed == len(refused) >= 2
    back = min(c.at for c in calls if c.method == "PUT" and c.status == 200 and c.at > refused[-1])
    deletes = [c.at for c in calls if c.action.startswith("DeleteMessage")]
    assert not [t for t in deletes if refused[0] <= t < back]
    assert [t for t in deletes if t >= back]  # the held messages, once stored
    (fault,) = events(pipeline, "fault")  # one line for the whole episode...
    assert "SlowDown" in str(fault["error"]) and fault["level"] == "error"
    assert len(events(pipeline, "recovered")) == 1  # ...and one when it was over
    assert events(pipeline, "poison_message") == []
