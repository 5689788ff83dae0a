"""Partials made at ingest and merged at aggregation give byte for byte the aggregate of decoding
every line: whatever the envelopes, the files, the values (ties of 1 and 1.0, sums beyond the
float range), whether files lack partials or their object is unreadable, and whatever the
duplicates (a repeated envelope of derived ids is dropped; any other repeated id sends the hour
back to the lines)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import aggregate, dedupe
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.errors import StorageUnavailable
from telemetry.domain.partials import (
    MIN_READINGS_PER_VEHICLE,
    decode_partials,
    distinct_partials,
    file_line,
    merge_partials,
    partial_line,
)
from telemetry.domain.readings import Reading, ReadingRules, Record, encode_record
from telemetry.entrypoints import aggregate_jobs
from tests.strategies import HOUR, VALUE_POOLS, distinct_records, records
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

RECORDS = st.one_of(
    distinct_records(),
    *(distinct_records(values=st.sampled_from(pool)) for pool in VALUE_POOLS.values()),
)


@st.composite
def lake_with_partials(draw: st.DrawFn) -> tuple[MemoryStorage, list[Record]]:
    """Distinct records of one hour in 1-4 files made of envelopes (runs of records), some
    envelopes stored twice (a redelivered message); the files' partials in 1-2 objects, some
    files left out, an object now and then corrupt."""
    rs = draw(RECORDS)
    cuts = sorted(draw(st.lists(st.integers(0, len(rs)), max_size=4)))
    envelopes = [e for a, b in itertools.pairwise([0, *cuts, len(rs)]) if (e := rs[a:b])]
    envelopes += draw(st.lists(st.sampled_from(envelopes), max_size=2)) if envelopes else []
    envelopes = draw(st.permutations(envelopes))
    cuts = sorted(draw(st.lists(st.integers(0, len(envelopes)), max_size=3)))
    files = [f for a, b in itertools.pairwise([0, *cuts, len(envelopes)]) if (f := envelopes[a:b])]
    storage = MemoryStorage()
    objects: list[list[bytes]] = [[], []]
    for i, f in enumerate(files):
        key = lake.raw_key(HOUR, f"f{i}", False)
        storage.put(key, b"".join(encode_record(r) + b"\n" for e in f for r in e))
        lines = [partial_line(e, True, min_per_vehicle=1) for e in f]
        if None not in lines and draw(st.booleans()):
            objects[draw(st.integers(0, 1))].append(file_line(key, lines))  # type: ignore[arg-type]
    for i, lines in enumerate(objects):
        data = b"".join(lines)
        if data and draw(st.integers(0, 5)) == 0:
            data = data[:-7]
        storage.put(lake.partials_key(HOUR, f"p{i}"), data)
    return storage, [r for f in files for e in f for r in e]


@settings(max_examples=300, deadline=None)
@given(lake_with_partials())
def test_partials_merge_to_what_decoding_every_line_gives(
    case: tuple[MemoryStorage, list[Record]],
) -> None:
    storage, stored = case
    result = AggregateHours(storage).hour(HOUR)
    assert storage.get(lake.aggregate_key(HOUR)) == aggregate(HOUR, dedupe(stored)).encode()
    assert result.raw_records == len(stored)
    assert result.readings == len({(r.vehicle_id, r.reading_id) for r in stored})


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), min_size=1, max_size=30), st.data())
def test_a_repeated_id_partials_cannot_settle_is_settled_by_the_lines(
    rs: list[Record], data: Any
) -> None:
    """Copies (even differing ones, and under ids claimed to be derived) in envelopes that are
    not byte-identical twins: the lines decide which copy counts, by the rule of one pass."""
    copies = data.draw(st.lists(st.sampled_from(rs), min_size=1, max_size=5))
    storage = MemoryStorage()
    lines = []
    for i, f in enumerate((rs, copies)):
        key = lake.raw_key(HOUR, f"f{i}", False)
        storage.put(key, b"".join(encode_record(r) + b"\n" for r in f))
        line = partial_line(f, data.draw(st.booleans()), min_per_vehicle=1)
        if line is not None:
            lines.append(file_line(key, [line]))
    storage.put(lake.partials_key(HOUR, "p"), b"".join(lines))
    AggregateHours(storage).hour(HOUR)
    expected = aggregate(HOUR, dedupe(rs + copies)).encode()
    assert storage.get(lake.aggregate_key(HOUR)) == expected


def test_a_partial_is_the_one_envelope_statistics() -> None:
    t = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
    rs = [
        Record("a", "car-1", t, t, {"v": 1, "b": True, "s": "x"}),
        Record("b", "car-1", t + timedelta(seconds=1), t, {"v": 2.5}),
        Record("c", "car-2", t, t, {"v": -0.0}),
    ]
    assert partial_line(rs, True) is None  # 1.5 readings per vehicle: not worth one
    line = partial_line(rs, True, min_per_vehicle=1)
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
    (p,) = decode_partials(line)
    assert p.derived
    assert p.vehicles["car-1"].ids == ["a", "b"] and p.vehicles["car-2"].ids == ["c"]
    car1 = p.vehicles["car-1"]
    assert (car1.first_ts, car1.last_ts) == (t, t + timedelta(seconds=1))
    assert set(car1.signals) == {"v"}  # bool and str are not numeric statistics
    v = car1.signals["v"]
    assert (v.count, v.min, v.max, sum(v.sum)) == (2, 1, 2.5, 3.5)
    agg = merge_partials(HOUR, [p, p])  # the caller keeps duplicates out; counts just add
    assert agg.vehicles["car-1"].readings == 4 and agg.vehicles["car-1"].signals["v"].mean == 1.75


def _raw(records: list[Record], derived: bool = True) -> msgspec.Raw:
    line = partial_line(records, derived, min_per_vehicle=1)
    assert line is not None
    return msgspec.Raw(line.rstrip(b"\n"))


def test_distinct_partials_drop_twins_of_derived_ids_and_refuse_any_other_repeat() -> None:
    t = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)

    def rec(rid: str, vid: str = "car-1", v: int = 1) -> Record:
        return Record(rid, vid, t, t, {"v": v})

    a = _raw([rec("a"), rec("b")])
    twin = msgspec.Raw(bytes(a))  # another object, the same bytes
    kept = distinct_partials([a, _raw([rec("c")]), twin, twin])
    assert kept is not None and len(kept.partials) == 2 and kept.lines == 7
    assert kept.ids == {"car-1": {"a", "b", "c"}}
    # The same reading id under another vehicle is another reading.
    other = distinct_partials([a, _raw([rec("a", "car-2")])])
    assert other is not None and other.ids == {"car-1": {"a", "b"}, "car-2": {"a"}}
    refused = {
        "twins of client ids": [_raw([rec("a")], False), _raw([rec("a")], False)],
        "one id twice in an envelope": [_raw([rec("a"), rec("a")])],
        "a repeat in an envelope that differs": [a, _raw([rec("b"), rec("d")])],
        # a differing envelope with the same first identity, then a true twin of the first
        "the same first identity": [a, _raw([rec("a", v=2)]), twin],
    }
    for case, envelopes in refused.items():
        assert distinct_partials(envelopes) is None, case
    # The rest of the hour, decoded from its lines, is checked against the partials' ids.
    assert kept.add([("car-2", "a"), ("car-1", "d")])
    assert not kept.add([("car-1", "a")])
    assert not kept.add([("car-3", "x"), ("car-3", "x")])


def test_a_file_line_is_the_documented_json() -> None:
    t = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
    line = partial_line([Record("a", "car-1", t, t, {"v": 1})], False, min_per_vehicle=1)
    assert line is not None
    got = json.loads(file_line("raw/x.jsonl", [line, line]))
    assert got == {"file": "raw/x.jsonl", "envelopes": [json.loads(line)] * 2}


# ---------------------------------------------------------------- through ingest and the worker

T = datetime(2026, 11, 29, 3, 50, tzinfo=UTC)


def _send(queue: MemoryQueue, clock: FakeClock, requests: int, *, per_vehicle: bool,
          minutes: int = 20, resend: int = 0, client_ids: bool = False) -> list[str]:
    """`requests` requests of 20 readings: from one vehicle each, or from 20 vehicles; the
    first `resend` requests sent a second time (a lost 202)."""
    accept = SyncIngest(queue, clock, ReadingRules())
    bodies = []
    for i in range(requests):
        ts = clock.now() - timedelta(minutes=5 + i % minutes)
        bodies.append([
            Reading(f"car-{i % 7 if per_vehicle else s}", ts - timedelta(seconds=s),
                    {"speed": s * 1.5, "gear": s % 6, "on": True},
                    reading_id=f"r-{i}-{s}" if client_ids else None)
            for s in range(20)
        ])
    ids: list[str] = []
    for body in bodies + bodies[:resend]:
        ids += accept.execute(body, None).reading_ids
    return ids


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.raw_gets = 0
        self.fail_partials = False

    def get(self, key: str) -> bytes:
        self.raw_gets += key.startswith(lake.RAW)
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        if self.fail_partials and key.startswith(lake.PARTIALS):
            raise StorageUnavailable("lake: EIO")
        super().put(key, data)


def _pipeline(**send: Any) -> tuple[CountingStorage, list[str], DrainBatches]:
    clock = FakeClock(T)
    queue, storage = MemoryQueue(), CountingStorage()
    ids = _send(queue, clock, 40, **send)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_readings=200, max_age_seconds=0))
    drain.until_empty()
    return storage, ids, drain


def _decoded_again(storage: CountingStorage, results: list[Any]) -> dict[str, bytes]:
    """The aggregates written with every line decoded (the partials set aside)."""
    for key in storage.list(lake.PARTIALS):
        del storage.objects[key]
    service = AggregateHours(storage)
    return {service.hour(r.hour).key: storage.get(r.key) for r in results}


@pytest.mark.parametrize("resend", [0, 5])
def test_requests_of_one_vehicle_are_aggregated_without_a_raw_read(resend: int) -> None:
    """Re-sent requests store their readings twice, in twin envelopes of derived ids: the
    partials still settle them."""
    storage, ids, _ = _pipeline(per_vehicle=True, resend=resend)
    raw = storage.list(lake.RAW)
    assert len(raw) > 2 and len(storage.list(lake.PARTIALS)) == 1  # one hour, one write
    results = AggregateHours(storage).changed()
    assert storage.raw_gets == 0
    assert sum(r.from_partials for r in results) == len(raw)
    assert sum(r.readings for r in results) == len(set(ids)) == 800
    assert sum(r.raw_records for r in results) == len(ids) == 800 + 20 * resend
    fast = {r.key: storage.get(r.key) for r in results}
    assert _decoded_again(storage, results) == fast


def test_repeated_client_ids_send_the_hour_back_to_its_lines() -> None:
    storage, ids, _ = _pipeline(per_vehicle=True, resend=3, client_ids=True)
    results = AggregateHours(storage).changed()
    assert storage.raw_gets > 0 and any(r.from_partials == 0 for r in results)
    assert sum(r.readings for r in results) == len(set(ids)) == 800
    fast = {r.key: storage.get(r.key) for r in results}
    assert _decoded_again(storage, results) == fast


def test_requests_of_many_vehicles_carry_no_partials() -> None:
    assert MIN_READINGS_PER_VEHICLE * 20 > 20
    storage, ids, _ = _pipeline(per_vehicle=False)
    assert storage.list(lake.RAW) and storage.list(lake.PARTIALS) == []
    assert sum(r.readings for r in AggregateHours(storage).changed()) == len(set(ids))


def test_the_worker_writes_partials_every_interval_and_at_the_end() -> None:
    clock = FakeClock(T)
    queue, storage = MemoryQueue(), CountingStorage()
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0),
                         partials_every=60)
    _send(queue, clock, 3, per_vehicle=True)
    drain.poll(0)
    assert storage.list(lake.RAW) and storage.list(lake.PARTIALS) == []
    clock.advance(30)
    _send(queue, clock, 3, per_vehicle=True)
    drain.poll(0)
    assert storage.list(lake.PARTIALS) == []
    clock.advance(30)
    drain.poll(0)  # 60 s after the first file: one object for the hour, covering both
    (first,) = storage.list(lake.PARTIALS)
    assert [json.loads(x)["file"] for x in storage.get(first).splitlines()] == storage.list(
        lake.RAW)
    _send(queue, clock, 3, per_vehicle=True)
    drain.poll(0)
    drain.flush_all()  # shutdown: whatever is kept is written
    assert len(storage.list(lake.PARTIALS)) == 2


def test_the_worker_writes_partials_before_they_hold_more_than_their_limit() -> None:
    clock = FakeClock(T)
    queue, storage = MemoryQueue(), CountingStorage()
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0),
                         partials_max_bytes=2000)
    for _ in range(6):
        clock.advance(1)
        _send(queue, clock, 1, per_vehicle=True)
        drain.poll(0)  # one file each, with several hundred bytes of partials
    written = [p.key for p in drain.partials_log]
    assert len(written) >= 2  # long before `partials_every`
    drain.flush_all()
    objects = [p.key for p in drain.partials_log]
    lines = {k: storage.get(k).splitlines(keepends=True) for k in objects}
    longest = max(len(line) for ls in lines.values() for line in ls)
    assert all(2000 <= sum(map(len, lines[k])) < 2000 + longest for k in written)
    covered = [json.loads(line)["file"] for k in objects for line in lines[k]]
    assert sorted(covered) == storage.list(lake.RAW)


def test_an_envelope_with_a_corrupt_partial_is_stored_and_its_file_decoded() -> None:
    clock = FakeClock(T)
    queue, storage = MemoryQueue(), CountingStorage()
    ids = _send(queue, clock, 2, per_vehicle=True)
    (first, _) = queue.messages.values()
    head, _, rest = first.body.partition(b"\n")
    partial, _, lines = rest.partition(b"\n")
    first.body = b"\n".join((head, partial[:-3], lines))
    DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0)).until_empty()
    assert queue.messages == {} and queue.dead == {}  # the readings are sound
    assert storage.list(lake.PARTIALS) == []  # the file of two envelopes has one partial
    assert sum(r.readings for r in AggregateHours(storage).changed()) == len(ids)


def test_a_failed_write_of_partials_drops_them_and_loses_no_reading() -> None:
    clock = FakeClock(T)
    queue, storage = MemoryQueue(), CountingStorage()
    storage.fail_partials = True
    ids = _send(queue, clock, 10, per_vehicle=True)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0))
    drain.until_empty()
    assert storage.list(lake.PARTIALS) == []
    assert [p.error for p in drain.partials_log] == ["lake: EIO"]
    assert queue.messages == {}
    assert sum(r.readings for r in AggregateHours(storage).changed()) == len(ids)


def test_jobs_merge_partials_in_the_parent_and_split_the_rest_over_processes() -> None:
    storage, _, _ = _pipeline(per_vehicle=True)
    (hour,) = {lake.hour_of_key(k) for k in storage.list(lake.RAW)}
    assert hour is not None
    service = AggregateHours(storage)
    keys = service.hour_keys(hour)
    one = service.hour(hour, keys)
    expected = storage.get(one.key)
    (got,) = aggregate_jobs.run(lambda: AggregateHours(storage), [(hour, keys)], 2)
    assert got.readings == one.readings and storage.get(got.key) == expected
    (partials,) = storage.list(lake.PARTIALS)
    lines = storage.get(partials).splitlines(keepends=True)
    storage.put(partials, b"".join(lines[1:]))  # a file without: the hour split over forks
    (got,) = aggregate_jobs.run(lambda: AggregateHours(storage), [(hour, keys)], 2)
    assert got.readings == one.readings and storage.get(got.key) == expected
