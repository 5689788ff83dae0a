"""The worker's observers over the in-memory adapters: Prometheus counters of retries and fault
episodes, the queue's depth (looked at only when the metrics listener is on, and then served
over a real socket), and the state published to the lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.ports.depth import QueueDepth
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.domain.worker_state import WorkerState, state_key, window
from telemetry.entrypoints.settings import Settings, load_settings
from telemetry.entrypoints.worker import Worker
from telemetry.entrypoints.worker_metrics import WorkerMetrics
from telemetry.entrypoints.worker_observers import Observers, observers
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


class CountedDepth(MemoryQueue):
    """A memory queue that counts the looks at its depth."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.looks = 0

    def depth(self) -> QueueDepth:
        self.looks += 1
        return super().depth()


def _watched_worker(tmp_path: Path, port: int | None) -> tuple[CountedDepth, Observers, Worker]:
    clock = FakeClock(T0 + timedelta(minutes=10))
    queue = CountedDepth(clock=clock)
    enqueue(queue, clock, 3)
    drain = DrainBatches(queue, MemoryStorage(), clock, BatchPolicy(max_age_seconds=0))
    settings = Settings(data_dir=tmp_path, worker_metrics_port=port)
    watch = observers(settings, drain)
    return queue, watch, Worker(drain, VirtualTime(clock), clock=clock, observers=watch.all)


def test_without_its_listener_the_worker_never_looks_at_the_queue_depth(tmp_path: Path) -> None:
    queue, watch, worker = _watched_worker(tmp_path, None)  # the default: off
    assert watch.server is None
    for _ in range(3):
        worker.run(once=True)
        for _ in range(5):
            worker.observers[0].idle()
    watch.close()
    assert queue.looks == 0
    assert worker.stats.readings == 3


def test_with_its_listener_the_worker_serves_the_depth_over_a_socket(tmp_path: Path) -> None:
    queue, watch, worker = _watched_worker(tmp_path, 0)  # any free port
    assert watch.server is not None
    url = watch.server.url
    try:
        assert queue.looks == 1  # at start, so the first scrape has it
        worker.run(once=True)
        assert queue.looks == 2  # and when the worker stops
        metrics = httpx.get(url + "/metrics", timeout=5)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'telemetry_queue_messages{state="visible"} 0.0' in metrics.text
        assert "telemetry_worker_readings_total 3.0" in metrics.text
        health = httpx.get(url + "/healthz", timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert httpx.get(url + "/nowhere", timeout=5).status_code == 404
        assert httpx.post(url + "/metrics", timeout=5).status_code == 405
    finally:
        watch.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/metrics", timeout=1)
