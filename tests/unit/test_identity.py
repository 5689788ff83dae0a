"""A reading's identity is `(vehicle_id, reading_id)`: whatever ids other vehicles choose, each
vehicle's aggregate is the aggregate of its own readings alone, on every path aggregation takes
(records, lean records, partials made at ingest, an hour split over parts)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import aggregate, decode_aggregate_lines, dedupe
from telemetry.domain.hour_slices import HourSlice, shared_ids
from telemetry.domain.partials import file_line, partial_line
from telemetry.domain.readings import Record, encode_record
from tests.strategies import HOUR, records

VICTIM = "car-77"
OTHERS = ("truck-1", "truck-2")
OWN = st.lists(records(vehicles=(VICTIM,)), min_size=1, max_size=15,
               unique_by=lambda r: r.reading_id)
FOREIGN = records(vehicles=OTHERS)


@st.composite
def attacked_lake(draw: st.DrawFn) -> tuple[MemoryStorage, list[str], list[Record]]:
    """The victim's distinct readings, and other vehicles' readings that reuse the victim's
    ids (received before or after, any content), spread over files, with partials for some."""
    own = draw(OWN)
    foreign = []
    for theirs in draw(st.lists(FOREIGN, max_size=15)):
        if draw(st.booleans()):
            stolen = draw(st.sampled_from(own))
            shift = timedelta(seconds=draw(st.integers(-5, 5)))
            theirs = replace(theirs, reading_id=stolen.reading_id,  # noqa: PLW2901
                             received_at=stolen.received_at + shift)
        foreign.append(theirs)
    rs = draw(st.permutations(own + foreign + draw(st.lists(st.sampled_from(own), max_size=3))))
    cuts = sorted(draw(st.lists(st.integers(0, len(rs)), max_size=4)))
    files = [f for a, b in itertools.pairwise([0, *cuts, len(rs)]) if (f := rs[a:b])]
    storage = MemoryStorage()
    keys, lines = [], []
    for i, f in enumerate(files):
        key = lake.raw_key(HOUR, f"f{i}", False)
        storage.put(key, b"".join(encode_record(r) + b"\n" for r in f))
        keys.append(key)
        line = partial_line(f, draw(st.booleans()), min_per_vehicle=1)
        if line is not None and draw(st.booleans()):
            lines.append(file_line(key, [line]))
    storage.put(lake.partials_key(HOUR, "p"), b"".join(lines))
    return storage, keys, own


def _victim_line(data: bytes) -> Any:
    return next(line for line in decode_aggregate_lines(data) if line.vehicle_id == VICTIM)


@settings(max_examples=200, deadline=None)
@given(attacked_lake(), st.integers(1, 4))
def test_a_vehicle_aggregate_is_its_readings_alone_whatever_ids_others_chose(
    case: tuple[MemoryStorage, list[str], list[Record]], n: int
) -> None:
    storage, keys, own = case
    alone = _victim_line(aggregate(HOUR, own).encode())
    everything = [r for k in keys for r in AggregateHours(storage).read_hour([k])]
    assert _victim_line(aggregate(HOUR, dedupe(everything)).encode()) == alone
    AggregateHours(storage).hour(HOUR, keys)  # partials, lean records or records
    assert _victim_line(storage.get(lake.aggregate_key(HOUR))) == alone
    # the hour split over parts, as `aggregate --jobs` does over processes
    parts = [HourSlice(storage, keys[i::n]) for i in range(n) if keys[i::n]]
    shared = shared_ids([p.ids() for p in parts])
    results = [p.finish(HOUR, shared) for p in parts]
    AggregateHours(storage).hour_from_slices(HOUR, keys, results)
    assert _victim_line(storage.get(lake.aggregate_key(HOUR))) == alone


def test_the_same_id_under_two_vehicles_is_two_readings() -> None:
    t = HOUR + timedelta(minutes=5)
    theirs = Record("car-77:1", "truck-1", t, t, {"v": 99.0})
    mine = Record("car-77:1", VICTIM, t, t + timedelta(seconds=1), {"v": 42.0})
    kept = dedupe([mine, theirs])
    assert sorted(r.vehicle_id for r in kept) == [VICTIM, "truck-1"]
    line = _victim_line(aggregate(HOUR, kept).encode())
    assert (line.readings, line.signals["v"]["min"]) == (1, 42.0)


def test_a_lake_aggregated_under_the_old_identity_is_aggregated_again_once() -> None:
    t = HOUR + timedelta(minutes=5)
    storage = MemoryStorage()
    key = lake.raw_key(HOUR, "f0", False)
    storage.put(key, b"".join(encode_record(r) + b"\n" for r in [
        Record("car-77:1", "truck-1", t, t, {"v": 99.0}),
        Record("car-77:1", VICTIM, t, t + timedelta(seconds=1), {"v": 42.0}),
    ]))
    # what the previous release wrote: its state (version 1) and an aggregate without car-77
    storage.put(lake.AGGREGATE_STATE, json.dumps(
        {"version": 1, "hours": {lake.format_hour(HOUR): [key]}}).encode())
    storage.put(lake.aggregate_key(HOUR), b"")
    (result,) = AggregateHours(storage).changed()
    assert result.readings == 2
    assert _victim_line(storage.get(lake.aggregate_key(HOUR))).readings == 1
    assert AggregateHours(storage).changed() == []  # once
