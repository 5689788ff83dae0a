"""The use cases on SqsQueue + S3Storage in one process: accept -> drain -> aggregate, and the
worker's visibility extension against SQS's own clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from telemetry.adapters.clock import SystemClock
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import Reading, ReadingRules
from tests.support import moto as moto_server
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest
from tests.support.moto import AwsTarget

aws = moto_server.aws


def test_accept_drain_aggregate_on_sqs_and_s3(aws: AwsTarget) -> None:
    queue = aws.queue(message_size=16 * 1024)  # small messages: one request spans several
    storage = aws.storage("lake", list_page_size=3)
    clock = SystemClock()
    now = clock.now().replace(microsecond=0)
    # U+FFFF: SQS needs the base64 path. 200 of them make ~60 readings overflow 16 KB, so an
    # hour's envelope must split by size whatever minute the test runs at.
    signals = {"Vehicle.Speed": 1.5, "s": "\uffff" * 200}
    readings = [Reading(f"car-{i % 4}", now - timedelta(minutes=i), signals) for i in range(120)]
    accepted = SyncIngest(queue, clock, ReadingRules()).execute(readings, None)
    hours = {r.ts.astimezone(UTC).replace(minute=0, second=0) for r in readings}
    assert accepted.messages > len(hours)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0.1))
    files = drain.until_empty()
    assert sum(f.readings for f in files) == 120
    assert queue.receive(10) == []  # all deleted
    stored = [
        json.loads(line)
        for k in storage.list(lake.RAW)
        for line in storage.get(k).decode().splitlines()
    ]
    assert sorted(r["reading_id"] for r in stored) == sorted(accepted.reading_ids)
    assert {r["signals"]["s"] for r in stored} == {"\uffff" * 200}
    results = AggregateHours(storage).changed()
    assert sum(r.readings for r in results) == 120
    assert {r.key for r in results} == {
        lake.aggregate_key(datetime.fromisoformat(r["ts"]).astimezone(UTC)) for r in stored
    }


def test_an_open_batch_outlives_the_visibility_timeout(aws: AwsTarget) -> None:
    """The worker's clock and SQS's (moto's, virtual) move together, by hand."""
    queue = aws.queue(visibility_timeout=30)
    storage = aws.storage()
    clock = FakeClock(datetime.now(UTC))

    def advance(seconds: float) -> None:
        clock.advance(seconds)
        aws.advance(seconds)

    SyncIngest(queue, clock, ReadingRules()).execute(
        [Reading("car-1", clock.now() - timedelta(seconds=5), {"x": 1})], None
    )
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=100))
    assert drain.poll(0).received == 1
    for _ in range(9):  # 90 s: three visibility timeouts inside one open batch
        advance(10)
        assert drain.poll(0).received == 0  # nothing came back, not even to this worker
        assert queue.receive(10) == []  # nor to another one
    advance(11)
    files = drain.poll(0).files
    assert [f.readings for f in files] == [1]
    assert storage.list(lake.RAW) == [files[0].key]
    advance(60)
    assert queue.receive(10) == []  # deleted
