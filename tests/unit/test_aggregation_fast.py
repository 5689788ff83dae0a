"""The lean path of `AggregateHours` (whole files decoded into per-hour Structs, aggregated a
column at a time) gives exactly what the Record path gives: same aggregate file, byte for byte."""

from __future__ import annotations

import gzip
import itertools
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import RawDecoder, aggregate, dedupe
from telemetry.domain.readings import Record, encode_record
from tests.strategies import HOUR, records

few_ids = st.sampled_from([f"r{i}" for i in range(6)])


@st.composite
def lake_files(draw: st.DrawFn) -> list[list[Record]]:
    """Records of one hour in 1-4 files; reading ids may repeat, as identical copies or not,
    and signal names first appear in any file."""
    ids = draw(st.sampled_from([few_ids, None]))
    rs = draw(st.lists(records(reading_id=ids), min_size=1, max_size=25))
    rs += draw(st.lists(st.sampled_from(rs), max_size=6))  # identical copies
    cuts = sorted(draw(st.lists(st.integers(0, len(rs)), max_size=3)))
    bounds = [0, *cuts, len(rs)]
    files = [rs[a:b] for a, b in itertools.pairwise(bounds)]
    return [f for f in files if f]


def _store(files: list[list[Record]], gz: bool = False) -> tuple[MemoryStorage, list[str]]:
    storage = MemoryStorage()
    keys = []
    for i, f in enumerate(files):
        data = b"".join(encode_record(r) + b"\n" for r in f)
        key = lake.raw_key(HOUR, f"f{i}", gz)
        storage.put(key, gzip.compress(data) if gz else data)
        keys.append(key)
    return storage, keys


@settings(max_examples=300, deadline=None)
@given(lake_files(), st.booleans())
def test_the_lean_path_writes_what_the_record_path_writes(
    files: list[list[Record]], gz: bool
) -> None:
    storage, keys = _store(files, gz)
    result = AggregateHours(storage).hour(HOUR, keys)
    everything = [r for f in files for r in f]
    expected = aggregate(HOUR, dedupe(everything))
    assert storage.get(lake.aggregate_key(HOUR)) == expected.encode()
    assert result.raw_records == len(everything)
    assert result.readings == expected.readings


def test_copies_received_at_the_same_instant_that_differ_take_the_record_path() -> None:
    a = Record("r1", "truck-1", HOUR, HOUR + timedelta(hours=1), {"x": 1})
    b = Record("r1", "truck-1", HOUR, HOUR + timedelta(hours=1), {"x": 1.0})
    storage, keys = _store([[a], [b]])
    AggregateHours(storage).hour(HOUR, keys)
    assert storage.get(lake.aggregate_key(HOUR)) == aggregate(HOUR, dedupe([a, b])).encode()


def test_the_decoder_refuses_what_record_refuses() -> None:
    bad: list[dict[str, Any]] = [
        {"reading_id": "a", "vehicle_id": "v", "ts": "x", "received_at": "x", "signals": {}},
        {"reading_id": "a", "vehicle_id": "v", "ts": "2026-11-29T01:00:00Z",
         "received_at": "2026-11-29T01:00:00Z", "signals": {"x": None}},
        {"reading_id": "a", "vehicle_id": "v", "ts": "2026-11-29T01:00:00Z",
         "received_at": "2026-11-29T01:00:00Z", "signals": {"x": [1]}},
        {"vehicle_id": "v", "ts": "2026-11-29T01:00:00Z",
         "received_at": "2026-11-29T01:00:00Z", "signals": {"x": 1}},
    ]
    record_decoder = msgspec.json.Decoder(Record)
    for obj in bad:
        line = msgspec.json.encode(obj) + b"\n"
        with pytest.raises(msgspec.DecodeError):
            record_decoder.decode_lines(line)
        with pytest.raises(msgspec.DecodeError):
            RawDecoder().decode(line)
