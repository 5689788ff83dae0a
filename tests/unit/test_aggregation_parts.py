"""An hour split over parts (as `telemetry aggregate --jobs` does over processes, here in one
process) gives byte for byte the aggregate of one pass: readings copied into several parts count
once, by the same rule, and neither the split nor the file order changes anything."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import aggregate, dedupe
from telemetry.domain.hour_slices import HourSlice, shared_ids
from telemetry.domain.readings import Record, encode_record
from tests.strategies import HOUR, VALUE_POOLS, records

FEW_IDS = st.sampled_from([f"r{i}" for i in range(8)])
RECORDS = st.one_of(
    records(reading_id=FEW_IDS),
    records(),
    *(records(reading_id=FEW_IDS, values=st.sampled_from(pool)) for pool in VALUE_POOLS.values()),
)


@st.composite
def lake_files(draw: st.DrawFn) -> list[list[Record]]:
    """Records of one hour in 1-5 files: identical copies spread over files, copies that differ
    (received at another time, or at the same instant in another spelling)."""
    rs = draw(st.lists(RECORDS, min_size=1, max_size=25))
    rs += draw(st.lists(st.sampled_from(rs), max_size=8))
    for r in draw(st.lists(st.sampled_from(rs), max_size=3)):
        name = min(r.signals)
        rs.append(replace(r, signals={**r.signals, name: draw(st.sampled_from([1, 1.0, True]))}))
        rs.append(replace(r, received_at=r.received_at + timedelta(seconds=draw(
            st.sampled_from([-1, 1])))))
    rs = draw(st.permutations(rs))
    cuts = sorted(draw(st.lists(st.integers(0, len(rs)), max_size=4)))
    files = [rs[a:b] for a, b in itertools.pairwise([0, *cuts, len(rs)])]
    return [f for f in files if f]


def _store(files: list[list[Record]]) -> tuple[MemoryStorage, list[str]]:
    storage = MemoryStorage()
    keys = []
    for i, f in enumerate(files):
        key = lake.raw_key(HOUR, f"f{i}", False)
        storage.put(key, b"".join(encode_record(r) + b"\n" for r in f))
        keys.append(key)
    return storage, keys


def split_run(
    storage: MemoryStorage, groups: list[list[str]], collide: random.Random | None = None
) -> bytes:
    """What the processes of `--jobs` do, one after the other: by ids, or (`collide`) by
    fingerprints, as between processes, with some fingerprints of unshared readings among the
    shared ones, as two identities sharing a fingerprint would put them."""
    parts = [HourSlice(storage, g) for g in groups]
    if collide is None:
        shared = shared_ids([p.ids() for p in parts])
        results = [p.finish(HOUR, shared) for p in parts]
    else:
        prints = [p.fingerprints() for p in parts]
        everything = sorted({f for ps in prints for f in ps})
        unshared = collide.sample(everything, collide.randrange(len(everything) + 1))
        shared_prints = shared_ids(prints) | set(unshared)
        results = [p.finish_fingerprints(HOUR, shared_prints) for p in parts]
    keys = [k for g in groups for k in g]
    AggregateHours(storage).hour_from_slices(HOUR, keys, results)
    return storage.get(lake.aggregate_key(HOUR))


@settings(max_examples=300, deadline=None)
@given(lake_files(), st.data())
def test_any_split_of_the_files_writes_what_one_pass_writes(
    files: list[list[Record]], data: Any
) -> None:
    storage, keys = _store(files)
    everything = [r for f in files for r in f]
    expected = aggregate(HOUR, dedupe(everything)).encode()
    assert AggregateHours(storage).hour(HOUR, keys).readings == len(
        {(r.vehicle_id, r.reading_id) for r in everything})
    assert storage.get(lake.aggregate_key(HOUR)) == expected
    order = data.draw(st.permutations(keys))
    n = data.draw(st.integers(1, len(keys)))
    groups = [list(order[i::n]) for i in range(n)]
    assert split_run(storage, groups) == expected
    assert split_run(storage, groups, data.draw(st.randoms(use_true_random=False))) == expected


def test_a_reading_copied_into_every_part_counts_once() -> None:
    r = Record("r1", "truck-1", HOUR, HOUR + timedelta(hours=1), {"x": 2.5, "y": 1})
    other = Record("r2", "truck-1", HOUR + timedelta(minutes=1), HOUR + timedelta(hours=1),
                   {"x": 0.5})
    storage, keys = _store([[r, other], [r], [r, r]])
    data = split_run(storage, [[k] for k in keys])
    assert data == aggregate(HOUR, [r, other]).encode()
    assert b'"readings":2' in data


def test_differing_copies_in_two_parts_keep_the_one_received_first() -> None:
    early = Record("r1", "truck-1", HOUR, HOUR + timedelta(hours=1), {"x": 1})
    late = replace(early, received_at=early.received_at + timedelta(seconds=1), signals={"x": 9})
    storage, keys = _store([[late], [early]])
    assert split_run(storage, [[keys[0]], [keys[1]]]) == aggregate(HOUR, [early]).encode()


def test_copies_that_tie_in_two_parts_fall_back_to_the_whole_hour() -> None:
    a = Record("r1", "truck-1", HOUR, HOUR + timedelta(hours=1), {"x": 1})
    b = replace(a, signals={"x": 1.0})
    storage, keys = _store([[a], [b]])
    assert split_run(storage, [[keys[0]], [keys[1]]]) == aggregate(HOUR, dedupe([a, b])).encode()
