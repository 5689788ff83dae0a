"""The pure part of curation: one copy per identity, the order, the split; the Parquet codec."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.domain.aggregation import dedupe
from telemetry.domain.curation import JsonLinesGzip, distinct_sorted, split_parts
from telemetry.domain.readings import Record, encode_records
from tests import strategies

_records = strategies.records(reading_id=st.sampled_from(["a", "b", "c", "d"]))


@given(st.lists(_records, max_size=30), st.randoms(use_true_random=False))
def test_one_copy_per_identity_the_one_the_aggregation_keeps_in_order(
    records: list[Record], rng: random.Random
) -> None:
    got = distinct_sorted(records)
    shuffled = list(records)
    rng.shuffle(shuffled)
    assert distinct_sorted(shuffled) == got  # file order does not matter
    assert len({(r.vehicle_id, r.reading_id) for r in got}) == len(got)
    assert {(r.vehicle_id, r.reading_id) for r in got} == {
        (r.vehicle_id, r.reading_id) for r in records
    }
    assert got == sorted(got, key=lambda r: (r.vehicle_id, r.ts, r.reading_id))
    for vehicle in {r.vehicle_id for r in records}:  # per vehicle, the aggregation's pick
        mine = [r for r in records if r.vehicle_id == vehicle]
        assert sorted(dedupe(mine), key=lambda r: (r.ts, r.reading_id)) == [
            r for r in got if r.vehicle_id == vehicle
        ]


def test_copies_equal_as_values_but_spelled_differently_settle_by_encoding() -> None:
    # 1 == 1.0 in Python, not in the file: the curated copy is the one the aggregation counts,
    # whichever file came first
    as_int = Record("r", "v", strategies.HOUR, strategies.HOUR, {"x": 1})
    as_float = Record("r", "v", strategies.HOUR, strategies.HOUR, {"x": 1.0})
    smaller = min(encode_records([as_int]), encode_records([as_float]))
    for order in ([as_float, as_int], [as_int, as_float]):
        assert encode_records(distinct_sorted(order)) == smaller
        assert encode_records(dedupe(order)) == smaller


@settings(max_examples=50)
@given(st.lists(strategies.records(), max_size=80), st.integers(1, 5000))
def test_parts_keep_every_record_in_order_within_the_target(
    records: list[Record], target: int
) -> None:
    runs = split_parts(records, encode_records, target)
    assert b"".join(data for _, data in runs) == encode_records(records)
    assert sum(n for n, _ in runs) == len(records)
    for n, data in runs:
        assert len(data) <= target or n == 1


def test_gzip_json_lines_are_the_raw_lines_compressed() -> None:
    rs = [Record("a", "v", *([strategies.HOUR] * 2), {"x": 1, "y": 1.0, "z": True, "s": "t"})]
    fmt = JsonLinesGzip()
    assert fmt.decode(fmt.encode(rs)) == rs


@settings(max_examples=30, deadline=None)  # the first example imports pyarrow
@given(st.lists(strategies.records(), max_size=20))
def test_parquet_gives_back_every_value_with_its_type(records: list[Record]) -> None:
    parquet = pytest.importorskip("telemetry.adapters.parquet")
    back = parquet.ParquetFormat().decode(parquet.ParquetFormat().encode(records))
    assert [(r.reading_id, r.vehicle_id, r.ts, r.received_at) for r in back] == [
        (r.reading_id, r.vehicle_id, r.ts, r.received_at) for r in records
    ]
    for b, r in zip(back, records, strict=True):
        assert {k: (type(v), v) for k, v in b.signals.items()} == {
            k: (type(v), v) for k, v in r.signals.items()
        }


def test_no_curated_field_shares_its_name_with_a_partition_key() -> None:
    import msgspec

    from telemetry.domain.curation import Manifest

    parquet = pytest.importorskip("telemetry.adapters.parquet")
    keys = {"year", "month", "day", "hour"}
    assert not keys & set(parquet.SCHEMA.names)
    assert not keys & set(Record.__struct_fields__)
    assert not keys & {f.name for f in msgspec.structs.fields(Manifest)}
