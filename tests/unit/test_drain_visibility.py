"""The worker keeps the messages it holds invisible: an open batch or a slow write never lets
them reappear to another worker, whatever the backend (the queue exposes its timeout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.readings import Reading, ReadingRules
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

T0 = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
VT = 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + timedelta(minutes=10))


@pytest.fixture
def queue(clock: FakeClock) -> MemoryQueue:
    return MemoryQueue(clock=clock, visibility_timeout=VT)


def enqueue(queue: MemoryQueue, clock: FakeClock, n: int = 1) -> None:
    readings = [Reading(f"car-{i}", T0, {"Vehicle.Speed": 1.0}) for i in range(n)]
    SyncIngest(queue, clock, ReadingRules()).execute(readings, None)


def visible_to_another_worker(queue: MemoryQueue) -> int:
    """How many messages a second worker would get now (it gives them straight back)."""
    got = queue.receive(10)
    queue.change_visibility([m.receipt for m in got], 0)
    return len(got)


def test_an_open_batch_older_than_half_the_timeout_stays_invisible(queue, clock) -> None:
    storage = MemoryStorage()
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=3 * VT))
    enqueue(queue, clock)
    assert drain.poll(0).received == 1
    for _ in range(5):  # 25 s held in an open batch: 2.5 visibility timeouts
        clock.advance(VT / 2)
        drain.poll(0)
        assert visible_to_another_worker(queue) == 0
    clock.advance(VT / 2)
    files = drain.poll(0).files
    assert [f.readings for f in files] == [1]
    assert queue.messages == {}  # deleted once stored
    assert len(storage.objects) == 1


def test_a_young_batch_is_not_extended(queue, clock) -> None:
    drain = DrainBatches(queue, MemoryStorage(), clock, BatchPolicy(max_age_seconds=3 * VT))
    enqueue(queue, clock)
    drain.poll(0)
    (entry,) = queue.messages.values()
    lease_end = entry.visible_at
    clock.advance(VT / 2 - 1)
    drain.poll(0)
    assert entry.visible_at == lease_end  # no call to the queue before one is due


def test_a_slow_write_does_not_let_later_batches_reappear(queue, clock) -> None:
    seen_during_writes: list[int] = []

    class SlowStorage(MemoryStorage):
        def put(self, key: str, data: bytes) -> None:
            clock.advance(0.8 * VT)  # each write takes most of a visibility timeout
            seen_during_writes.append(visible_to_another_worker(queue))
            super().put(key, data)

    drain = DrainBatches(queue, SlowStorage(), clock, BatchPolicy(max_age_seconds=3 * VT))
    # Three hours of event time: three batches, flushed one after the other at shutdown.
    for h in range(3):
        SyncIngest(queue, clock, ReadingRules()).execute(
            [Reading("car-1", T0 - timedelta(hours=h), {"x": 1})], None
        )
    assert drain.poll(0).received == 3
    assert len(drain.flush_all()) == 3
    assert seen_during_writes == [0, 0, 0]
    assert queue.messages == {}


def test_receive_waits_no_longer_than_the_next_extension(queue, clock) -> None:
    waits: list[float] = []

    class Recording(MemoryQueue):
        def receive(self, max_messages: int, wait_seconds: float = 0.0):  # type: ignore[override]
            waits.append(wait_seconds)
            return super().receive(max_messages, 0.0)

    q = Recording(clock=clock, visibility_timeout=VT)
    drain = DrainBatches(q, MemoryStorage(), clock, BatchPolicy(max_age_seconds=3 * VT))
    enqueue(q, clock)
    drain.poll(60)
    drain.poll(60)
    assert waits[0] == 60  # nothing held yet
    assert waits[1] == pytest.approx(VT / 2)


def test_a_queue_fault_while_extending_loses_no_batch(queue, clock) -> None:
    storage = MemoryStorage()
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=VT))
    enqueue(queue, clock, n=3)
    drain.poll(0)
    clock.advance(VT / 2)
    queue.available = False
    with pytest.raises(QueueUnavailable):
        drain.poll(0)
    queue.available = True
    clock.advance(VT / 2)
    files = drain.poll(0).files
    assert sum(f.readings for f in files) == 3
    assert queue.messages == {}
