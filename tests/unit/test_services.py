"""The use cases end to end on the in-memory adapters: accept -> drain -> aggregate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.api_keys import Principal
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.errors import Forbidden, InvalidReadings, QueueUnavailable, StorageUnavailable
from telemetry.domain.readings import Reading, ReadingRules
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

T0 = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)


def reading(vid: str, minutes: float, speed: float = 1.0, rid: str | None = None) -> Reading:
    return Reading(vid, T0 + timedelta(minutes=minutes), {"Vehicle.Speed": speed}, rid)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + timedelta(hours=1))


@pytest.fixture
def queue(clock: FakeClock) -> MemoryQueue:
    return MemoryQueue(clock=clock, max_message_bytes=64 * 1024)


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


def test_accept_packs_per_hour_and_returns_ids_in_order(queue, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    rs = [reading("a", 0), reading("b", 40), reading("a", 1, rid="given-1")]  # 01:30, 02:10
    result = accept.execute(rs, None)
    assert result.reading_ids[2] == "given-1"
    assert len(set(result.reading_ids)) == 3
    assert result.messages == 2  # one envelope per event-time hour
    assert len(queue.messages) == 2


def test_same_reading_gets_the_same_id_on_retry(queue, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    assert accept.execute([reading("a", 0)], None).reading_ids == accept.execute(
        [reading("a", 0)], None
    ).reading_ids


def test_invalid_request_enqueues_nothing(queue, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    future = Reading("a", clock.now() + timedelta(seconds=301), {"x": 1})
    with pytest.raises(InvalidReadings) as exc:
        accept.execute([reading("a", 0), future], None)
    assert [(p.index, p.field) for p in exc.value.problems] == [(1, "ts")]
    assert queue.messages == {}


def test_forbidden_vehicle_enqueues_nothing(queue, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    who = Principal("k", "0" * 16, ("car-*",))
    with pytest.raises(Forbidden) as exc:
        accept.execute([reading("car-1", 0), reading("truck-1", 0)], who)
    assert exc.value.vehicle_ids == ["truck-1"]
    assert queue.messages == {}


def test_queue_outage_surfaces_as_queue_unavailable(queue, clock) -> None:
    queue.available = False
    with pytest.raises(QueueUnavailable):
        SyncIngest(queue, clock, ReadingRules()).execute([reading("a", 0)], None)


def drainer(queue, storage, clock, **policy) -> DrainBatches:
    return DrainBatches(queue, storage, clock, BatchPolicy(**policy))


def test_drain_writes_one_file_per_hour_then_deletes(queue, storage, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    ids = accept.execute([reading("a", m) for m in range(0, 60, 5)], None).reading_ids
    files = drainer(queue, storage, clock).until_empty()
    h1 = T0.replace(minute=0)
    assert {f.hour for f in files} == {h1, h1 + timedelta(hours=1)}
    assert queue.messages == {}
    lines = [
        json.loads(line)
        for k in storage.list("raw/")
        for line in storage.get(k).decode().splitlines()
    ]
    assert sorted(r["reading_id"] for r in lines) == sorted(ids)
    for k in storage.list("raw/"):
        hour = lake.hour_of_key(k)
        assert all(lake.hour_of_key(lake.raw_prefix(datetime.fromisoformat(
            json.loads(line)["ts"]))) == hour for line in storage.get(k).decode().splitlines())
    rec = lines[0]
    assert list(rec) == ["reading_id", "vehicle_id", "ts", "received_at", "signals"]
    assert rec["ts"].endswith("Z") and rec["received_at"].endswith("Z")


def test_batch_waits_for_max_age(queue, storage, clock) -> None:
    SyncIngest(queue, clock, ReadingRules()).execute([reading("a", 0)], None)
    d = drainer(queue, storage, clock, max_age_seconds=5.0)
    assert d.poll(0).files == []
    assert storage.objects == {}
    clock.advance(5)
    files = d.poll(0).files
    assert len(files) == 1 and files[0].readings == 1
    assert files[0].received_to_stored.max_ms == pytest.approx(5000, abs=1)


def test_storage_failure_keeps_messages_for_redelivery(queue, clock) -> None:
    class Failing(MemoryStorage):
        def put(self, key: str, data: bytes) -> None:
            raise StorageUnavailable("disk full")

    SyncIngest(queue, clock, ReadingRules()).execute([reading("a", 0)], None)
    with pytest.raises(StorageUnavailable):
        drainer(queue, Failing(), clock).until_empty()
    assert len(queue.messages) == 1  # not deleted: it comes back after the visibility timeout
    clock.advance(queue.visibility_timeout)
    storage = MemoryStorage()
    drainer(queue, storage, clock).until_empty()
    assert queue.messages == {} and len(storage.list("raw/")) == 1


def test_poison_message_is_left_to_dead_letter(queue, storage, clock) -> None:
    queue.send([b"not an envelope"])
    d = drainer(queue, storage, clock)
    for _ in range(queue.max_receives):
        assert len(d.poll(0).poison) == 1
        clock.advance(queue.visibility_timeout)
    assert d.poll(0).received == 0
    assert len(queue.dead) == 1


def test_aggregate_counts_duplicates_once_and_tracks_changed_hours(queue, storage, clock) -> None:
    accept = SyncIngest(queue, clock, ReadingRules())
    accept.execute([reading("a", 0, 10.0), reading("a", 1, 20.0), reading("b", 2, 5.0)], None)
    drainer(queue, storage, clock).until_empty()
    accept.execute([reading("a", 0, 10.0)], None)  # a retried duplicate, in a second file
    drainer(queue, storage, clock).until_empty()
    agg = AggregateHours(storage)
    results = agg.changed()
    assert [(r.files, r.raw_records, r.readings) for r in results] == [(2, 4, 3)]
    rows = {
        r["vehicle_id"]: r
        for r in map(json.loads, storage.get(results[0].key).decode().splitlines())
    }
    assert rows["a"]["readings"] == 2
    assert rows["a"]["signals"]["Vehicle.Speed"] == {"count": 2, "min": 10.0, "max": 20.0,
                                                     "mean": 15.0}
    assert rows["a"]["hour_start"] == "2026-11-29T01:00:00Z"
    assert agg.changed() == []  # nothing new
    accept.execute([reading("c", 3)], None)  # late data for the same hour
    drainer(queue, storage, clock).until_empty()
    again = agg.changed()
    assert [r.readings for r in again] == [4]


def test_a_reading_too_big_for_one_queue_message_is_a_422_naming_it(clock) -> None:
    queue = MemoryQueue(clock=clock, max_message_bytes=4096)
    accept = SyncIngest(queue, clock, ReadingRules())
    big = Reading("b", T0, {f"Cabin.Note{i}": "x" * 200 for i in range(30)})
    with pytest.raises(InvalidReadings) as exc:
        accept.execute([reading("a", 0), big, reading("c", 1)], None)
    [problem] = exc.value.problems
    assert (problem.index, problem.field) == (1, "signals")
    assert "queue message holds at most 4096" in problem.message
    assert queue.messages == {}
    # Small readings are still split over as many messages as they need.
    many = [reading(f"v{i}", i / 100) for i in range(200)]
    assert accept.execute(many, None).messages > 1


def test_a_request_spanning_more_hours_than_the_rules_allow_is_refused_whole() -> None:
    queue, clock = MemoryQueue(), FakeClock(T0)
    accept = SyncIngest(queue, clock, ReadingRules(max_hours=3))
    start = (T0 - timedelta(hours=10)).replace(minute=0)
    three = [Reading("car-1", start + timedelta(minutes=m), {"v": 1}) for m in (0, 59, 60, 179)]
    accept.execute(three, None)
    with pytest.raises(InvalidReadings) as caught:
        accept.execute([*three, Reading("car-1", start + timedelta(hours=3), {"v": 1})], None)
    assert "span 4 hours" in caught.value.problems[0].message
    assert len(queue.receive(100)) == 3  # the first request's hours only
