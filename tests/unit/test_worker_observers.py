"""The worker's observers over the in-memory adapters: Prometheus counters of retries and fault
episodes, the queue's depth, and the state published to the lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.domain.worker_state import WorkerState, state_key, window
from telemetry.entrypoints.settings import load_settings
from telemetry.entrypoints.worker import Worker
from telemetry.entrypoints.worker_metrics import WorkerMetrics
from telemetry.entrypoints.worker_observers import observers
from telemetry.entrypoints.worker_publish import StatePublisher
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest
from tests.unit.test_drain_faults import T0, enqueue
from tests.unit.test_worker_backoff import RecordingQueue, TimedStorage, VirtualTime


def test_retries_and_fault_episodes_are_counted() -> None:
    clock = FakeClock(T0 + timedelta(minutes=10))
    queue = RecordingQueue(clock, visibility_timeout=5.0, max_receives=2)
    enqueue(queue, clock, 3, hour=0)
    enqueue(queue, clock, 2, hour=1)
    enqueue(queue, clock, 4, hour=2)
    storage = TimedStorage(clock, queue)
    storage.fail_attempts = {*range(1, 8), *range(10, 12)}  # two outages: 7 and 2 failed puts
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0), receive_max=1)
    metrics = WorkerMetrics(queue.depth, monotonic=clock.monotonic)
    worker = Worker(drain, VirtualTime(clock), clock=clock, min_backoff=0.5, max_backoff=4.0,
                    observers=[metrics])
    worker.run(once=True)
    assert worker.clean
    assert metrics.retries._value.get() == 9
    assert metrics.faults._value.get() == 2
    assert metrics.readings._value.get() == 9
    assert metrics.files._value.get() == 3
    text = generate_latest(metrics.registry).decode()
    assert "telemetry_worker_retries_total 9.0" in text
    assert "telemetry_worker_fault_episodes_total 2.0" in text
    assert 'telemetry_queue_messages{state="visible"} 0.0' in text
    assert "telemetry_worker_received_to_stored_seconds_count 9.0" in text


def test_the_published_state_merges_over_a_window() -> None:
    clock = FakeClock(T0)
    queue = RecordingQueue(clock, visibility_timeout=30.0)
    storage = MemoryStorage()
    enqueue(queue, clock, 5)
    clock.advance(2)  # the message waits 2 s before it is received
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    pub = StatePublisher(storage, window_s=60, every=10, name="w1", clock=clock)
    Worker(drain, VirtualTime(clock), clock=clock, observers=[pub]).run(once=True)
    state = WorkerState.decode(storage.get(state_key("w1")))
    w = window([state], clock.time(), 60)
    assert w.workers == 1
    assert (w.totals.sends, w.totals.messages, w.totals.readings, w.totals.files) == (1, 1, 5, 1)
    assert w.latest_oldest_age_ms == 2000
    assert w.totals.received_to_stored.count == 5
    assert w.totals.received_to_stored.percentile(99) >= 2000
    # past the window nothing counts
    later = window([state], clock.time() + 120, 60)
    assert later.workers == 0 and later.totals.readings == 0 and later.latest_receive is None


def test_the_worker_publishes_its_state_on_the_clock_it_drains_by(tmp_path: Path) -> None:
    # Years from the real time, so a state stamped by the system clock would fall outside.
    clock = FakeClock(datetime(2040, 5, 1, 12, 0, tzinfo=UTC))
    queue = RecordingQueue(clock, visibility_timeout=30.0)
    storage = MemoryStorage()
    readings = [Reading(f"car-{i}", clock.now() - timedelta(minutes=1), {"Vehicle.Speed": 1.0})
                for i in range(4)]
    SyncIngest(queue, clock, ReadingRules()).execute(readings, None)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    settings = load_settings({"TELEMETRY_DATA_DIR": str(tmp_path)})
    watch = observers(settings, drain, listen=False)
    Worker(drain, VirtualTime(clock), clock=clock, observers=watch.all).run(once=True)
    state = WorkerState.decode(storage.get(watch.publisher.key))
    w = window([state], clock.time(), settings.trigger_window)
    assert (w.workers, w.totals.readings, w.totals.files) == (1, 4, 1)
    assert w.last_update == clock.time()
