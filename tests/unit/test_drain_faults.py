"""Faults of the lake and the queue while draining: nothing accepted is lost, nothing healthy is
dead-lettered however long the fault lasts, memory stays within the batch policy, and poison
messages dead-letter without holding up the rest."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.adapters.clock import SystemClock
from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.errors import QueueUnavailable, StorageUnavailable
from telemetry.domain.packing import pack
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.entrypoints.worker import Worker
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

T0 = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
HOUR = int(T0.replace(minute=0).timestamp())
VT = 10.0
MAX_RECEIVES = 3


class FlakyStorage(MemoryStorage):
    """The lake with a switch: while `error` is set every put raises it (disk full, EACCES,
    an S3 error: the adapters all raise StorageUnavailable). `fail_next` fails that many puts,
    `fail_attempts` the puts of those numbers (1 is the first)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None
        self.fail_next = 0
        self.fail_attempts: set[int] = set()
        self.attempts = 0

    def put(self, key: str, data: bytes) -> None:
        self.attempts += 1
        if self.fail_next or self.attempts in self.fail_attempts:
            self.fail_next = max(0, self.fail_next - 1)
            raise StorageUnavailable("filesystem lake: No space left on device (ENOSPC)")
        if self.error is not None:
            raise self.error
        super().put(key, data)


class FlakyDeletes(MemoryQueue):
    """A queue whose next `fail_deletes` deletes raise, as SQS does when it is throttled."""

    fail_deletes = 0

    def delete(self, receipts):  # type: ignore[no-untyped-def]
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise QueueUnavailable("SQS delete_message_batch: ThrottlingException")
        super().delete(receipts)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + timedelta(minutes=10))


@pytest.fixture
def queue(clock: FakeClock) -> FlakyDeletes:
    return FlakyDeletes(clock=clock, visibility_timeout=VT, max_receives=MAX_RECEIVES)


@pytest.fixture
def storage() -> FlakyStorage:
    return FlakyStorage()


def enqueue(queue: MemoryQueue, clock: FakeClock, n: int, hour: int = 0) -> list[str]:
    readings = [
        Reading(f"car-{i}", T0 - timedelta(hours=hour), {"Vehicle.Speed": float(i)})
        for i in range(n)
    ]
    return SyncIngest(queue, clock, ReadingRules()).execute(readings, None).reading_ids


def stored_ids(storage: MemoryStorage) -> list[str]:
    return sorted(
        json.loads(line)["reading_id"]
        for key in storage.list("raw/")
        for line in storage.get(key).decode().splitlines()
    )


def visible_to_another_worker(queue: MemoryQueue) -> int:
    got = queue.receive(10)
    queue.change_visibility([m.receipt for m in got], 0)
    return len(got)


def test_an_outage_longer_than_max_receives_times_the_timeout_dead_letters_nothing(
    queue, storage, clock
) -> None:
    ids = enqueue(queue, clock, 3) + enqueue(queue, clock, 2, hour=1)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=1))
    storage.error = StorageUnavailable("S3 put raw/...: ServiceUnavailable")
    assert drain.poll(0).received == 2
    clock.advance(1)
    with pytest.raises(StorageUnavailable):
        drain.poll(0)  # both hours are due: the first write fails, both batches are kept
    assert drain.backlog == 2
    assert storage.attempts == 1  # a failing lake is not hammered with every batch
    # Ten visibility timeouts, more than max receives of them; the worker backs off and only
    # keeps its messages invisible meanwhile, with a write retry now and then.
    for step in range(40):
        clock.advance(VT / 4)
        drain.hold()
        assert visible_to_another_worker(queue) == 0
        if step % 8 == 7:
            with pytest.raises(StorageUnavailable):
                drain.poll(0)
    assert queue.dead == {}
    storage.error = None
    files = drain.poll(0).files
    assert sorted(f.readings for f in files) == [2, 3]
    assert stored_ids(storage) == sorted(ids)
    assert queue.messages == {} and queue.dead == {}
    assert drain.backlog == 0 and drain.held == []


def test_nothing_new_is_received_while_failed_writes_wait(queue, storage, clock) -> None:
    """Memory stays within what the batch policy held when the fault began."""
    enqueue(queue, clock, 1)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    storage.error = StorageUnavailable("filesystem lake: Permission denied (EACCES)")
    with pytest.raises(StorageUnavailable):
        drain.poll(0)
    first = set(queue.messages)
    later = enqueue(queue, clock, 5, hour=2)  # traffic keeps arriving during the outage
    for _ in range(5):
        clock.advance(1)
        with pytest.raises(StorageUnavailable):
            drain.poll(0)
    assert len(drain.held) == 1
    assert [e.receive_count for m, e in queue.messages.items() if m not in first] == [0]
    storage.error = None
    drain.until_empty()
    assert len(stored_ids(storage)) == 1 + len(later)
    assert queue.messages == {}


def test_a_failed_write_is_retried_without_waiting_for_redelivery(queue, storage, clock) -> None:
    ids = enqueue(queue, clock, 4)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    storage.fail_next = 1
    with pytest.raises(StorageUnavailable):
        drain.poll(0)
    (entry,) = queue.messages.values()
    files = drain.poll(0).files  # no visibility timeout waited for
    assert [f.readings for f in files] == [4]
    assert stored_ids(storage) == sorted(ids)
    assert entry.receive_count == 1  # received once, stored once
    assert queue.messages == {}


def test_a_write_that_failed_but_landed_is_overwritten_not_stored_twice(queue, clock) -> None:
    """An S3 put can time out after the object landed. The retry, seconds later, must land on
    the same key: a second key would hold every reading of the batch a second time."""

    class LandsThenFails(MemoryStorage):
        failed = False

        def put(self, key: str, data: bytes) -> None:
            super().put(key, data)
            if not self.failed:
                self.failed = True
                raise StorageUnavailable("s3 lake: read timeout")

    storage = LandsThenFails()
    ids = enqueue(queue, clock, 3)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    with pytest.raises(StorageUnavailable):
        drain.poll(0)
    clock.advance(5)  # the retry comes in another second
    assert [f.readings for f in drain.poll(0).files] == [3]
    assert len(storage.list("raw/")) == 1
    assert stored_ids(storage) == sorted(ids)
    assert queue.messages == {}


def test_files_stored_before_a_fault_are_still_reported(queue, storage, clock) -> None:
    enqueue(queue, clock, 1, hour=0)
    enqueue(queue, clock, 1, hour=1)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=60))
    drain.poll(0)
    clock.advance(60)
    storage.fail_attempts = {2}
    with pytest.raises(StorageUnavailable):
        drain.poll(0)
    assert len(storage.objects) == 1
    files = drain.poll(0).files
    assert len(files) == 2  # the one stored before the fault, and the retried one
    assert queue.messages == {}


def test_a_failed_delete_is_retried_without_writing_the_file_again(queue, storage, clock) -> None:
    ids = enqueue(queue, clock, 3)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    queue.fail_deletes = 2
    with pytest.raises(QueueUnavailable):
        drain.poll(0)
    clock.advance(VT)  # past the first lease: the held message was kept invisible all along
    with pytest.raises(QueueUnavailable):
        drain.poll(0)
    assert visible_to_another_worker(queue) == 0
    files = drain.poll(0).files
    assert [f.readings for f in files] == [3]  # reported once, when it was stored
    assert len(storage.objects) == 1 and storage.attempts == 1
    assert stored_ids(storage) == sorted(ids)
    assert queue.messages == {}


def test_shutdown_on_a_failing_lake_keeps_everything_and_can_give_it_back(
    queue, storage, clock
) -> None:
    enqueue(queue, clock, 2)
    enqueue(queue, clock, 2, hour=1)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=60))
    drain.poll(0)
    storage.error = StorageUnavailable("disk full")
    with pytest.raises(StorageUnavailable):
        drain.flush_all()
    assert queue.messages and all(e.receive_count == 1 for e in queue.messages.values())
    assert drain.release() == 2
    assert visible_to_another_worker(queue) == 2  # at once, not after the timeout
    assert drain.held == []
    storage.error = None
    DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0)).until_empty()
    assert len(stored_ids(storage)) == 4


@pytest.mark.parametrize(
    "body",
    [
        b"not an envelope",
        b'{"v":1,"hour":99999999999999999,"received_at":0,"ts":[1]}\n{"a":1}\n',  # no such year
        b'{"v":1,"hour":1764378001,"received_at":0,"ts":[1]}\n{"a":1}\n',  # not an hour start
        None,  # a valid header over a record line that is not JSON
    ],
    ids=["undecodable", "hour-out-of-range", "hour-unaligned", "corrupt-line"],
)
def test_poison_dead_letters_after_max_receives_and_never_blocks_the_rest(
    queue, storage, clock, body
) -> None:
    if body is None:
        (good,) = pack([(HOUR, b'{"reading_id":"x"}\n', 0)], 0, 10_000)
        body = good.replace(b'{"reading_id":"x"}', b'{"reading_id":"x"')
    queue.send([body])
    ids = enqueue(queue, clock, 2)  # the same hour as the corrupt line's envelope
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    poison = 0
    for _ in range(MAX_RECEIVES + 1):
        poison += len(drain.poll(0).poison)
        clock.advance(VT)
    assert poison == MAX_RECEIVES
    assert stored_ids(storage) == sorted(ids)  # stored on the first pass, never held up
    assert list(queue.dead) and queue.messages == {}
    assert [m.body for m in queue.dead_letters(10)] == [body]


def test_the_worker_logs_one_line_per_fault_episode(storage, clock, caplog) -> None:
    """A real-time Worker over the in-memory adapters: four failed writes, one fault line, one
    recovered line, every reading stored."""
    real = MemoryQueue(visibility_timeout=VT)
    ids = enqueue(real, clock, 5)
    storage.fail_next = 4
    drain = DrainBatches(real, storage, SystemClock(), BatchPolicy(max_age_seconds=0))
    worker = Worker(drain, threading.Event(), min_backoff=0.01, max_backoff=0.05)
    with caplog.at_level(logging.INFO, logger="telemetry.worker"):
        worker.run(once=True)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("fault") == 1 and events.count("recovered") == 1
    assert events.index("fault") < events.index("recovered")
    assert storage.attempts == 5
    assert stored_ids(storage) == sorted(ids)
    assert worker.clean and real.messages == {}


def test_a_message_back_from_a_dead_worker_is_written_at_once(
    queue, storage, clock
) -> None:
    """Held for the batch max age instead, it would give each further worker killed before its
    first file the chance to spend one more receive, until healthy messages dead-letter."""
    ids = enqueue(queue, clock, 4)
    policy = BatchPolicy(max_age_seconds=60)
    doomed = DrainBatches(queue, storage, clock, policy)
    assert doomed.poll(0).received == 1
    assert doomed.poll(0).files == []  # a fresh message waits for its batch to fill
    clock.advance(VT)  # the worker dies holding it; the message comes back
    survivor = DrainBatches(queue, storage, clock, policy)
    result = survivor.poll(0)
    assert [f.readings for f in result.files] == [4]  # not held for another 60 s
    assert stored_ids(storage) == sorted(ids)
    assert queue.messages == {} and queue.dead == {}
