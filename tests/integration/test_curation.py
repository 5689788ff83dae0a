"""Curated hours on the embedded lake and on S3 (moto): exactly the distinct readings of the raw
hour, in order, within the size target; late data re-curates only its hour; a second run
changes nothing; raw retention never goes before curation; the aggregates stay byte for byte
what the aggregation writes without curation."""

from __future__ import annotations

import contextlib
import gzip
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.memory import MemoryStorage
from telemetry.adapters.parquet import ParquetFormat
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.curation import (
    CuratedFormat,
    CurateHours,
    JsonLinesGzip,
    curated_prefix,
    read_manifest,
)
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import Record, encode_records
from tests.support.fakes import FakeClock

H1 = datetime(2026, 11, 29, 1, tzinfo=UTC)
H2 = H1 + timedelta(hours=1)
FORMATS = {"jsonl": JsonLinesGzip, "parquet": ParquetFormat}


@contextlib.contextmanager
def _lake(kind: str, tmp_path: Path) -> Iterator[Storage]:
    if kind == "filesystem":
        yield FilesystemStorage(tmp_path / "lake")
    else:
        from tests.support.moto import aws_target

        with aws_target("mock_aws") as target:
            yield target.storage("fleet/lake")


@pytest.fixture(params=["filesystem", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    with _lake(request.param, tmp_path) as s:
        yield s


def reading(rng: random.Random, vehicle: str, hour: datetime, n: int) -> Record:
    ts = hour + timedelta(seconds=rng.randrange(3600), microseconds=rng.randrange(10**6))
    signals: dict[str, bool | int | float | str] = {
        "Vehicle.Speed": round(rng.uniform(0, 130), 3),
        "Vehicle.Odometer": rng.randrange(10**6),
        "Vehicle.IsMoving": rng.random() < 0.5,
        "Vehicle.Gear": rng.choice(["P", "D", "R"]),
    }
    return Record(f"r{n}", vehicle, ts, ts + timedelta(seconds=2), signals)


def write_raw(storage: Storage, hour: datetime, name: str, records: list[Record],
              gz: bool = False) -> str:
    data = encode_records(records)
    key = lake.raw_key(hour, name, gz)
    storage.put(key, gzip.compress(data) if gz else data)
    return key


def lake_with_copies(
    storage: Storage, rng: random.Random, *, shared_id: bool = True
) -> dict[datetime, list[Record]]:
    """Two hours, three workers' files each, a third of the readings stored twice (one copy
    received later), one id used by two vehicles (`shared_id`); returns the distinct readings
    per hour."""
    truth: dict[datetime, list[Record]] = {}
    n = 0
    for hour in (H1, H2):
        records = []
        for _ in range(600):
            n += 1
            records.append(reading(rng, f"v{rng.randrange(7)}", hour, n))
        if shared_id:
            records.append(Record("shared", "v1", hour, hour, {"x": 1}))
            records.append(Record("shared", "v2", hour, hour, {"x": 2}))
        truth[hour] = records
        copies = [
            Record(r.reading_id, r.vehicle_id, r.ts, r.received_at + timedelta(seconds=9),
                   r.signals)
            for r in rng.sample(records, 200)
        ]
        mixed = records + copies
        rng.shuffle(mixed)
        for w in range(3):
            write_raw(storage, hour, f"20261129T0{w}-worker{w}", mixed[w::3], gz=w == 2)
    return truth


def in_order(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.vehicle_id, r.ts, r.reading_id))


def curated_readings(storage: Storage, fmt: CuratedFormat, hour: datetime) -> list[Record]:
    manifest = read_manifest(storage, hour)
    assert manifest is not None
    out: list[Record] = []
    for p in manifest.parts:
        out.extend(fmt.decode(storage.get(p.key)))
    listed = [k for k in storage.list(curated_prefix(hour)) if not k.endswith("_manifest.json")]
    assert listed == [p.key for p in manifest.parts]  # nothing else left in the hour
    return out


def same_readings(got: list[Record], want: list[Record]) -> None:
    """Equal, value for value (Parquet gives the signals back grouped by type)."""
    assert [(r.vehicle_id, r.reading_id, r.ts, r.received_at) for r in got] == [
        (r.vehicle_id, r.reading_id, r.ts, r.received_at) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        assert g.signals == w.signals
        assert {k: type(v) for k, v in g.signals.items()} == {
            k: type(v) for k, v in w.signals.items()
        }


def after(hour: datetime, seconds: float) -> FakeClock:
    return FakeClock(hour + timedelta(hours=1, seconds=seconds))


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_curated_hours_hold_each_distinct_reading_once_in_order_within_the_target(
    storage: Storage, fmt_name: str
) -> None:
    fmt = FORMATS[fmt_name]()
    truth = lake_with_copies(storage, random.Random(15))
    clock = after(H2, 600)
    target = 8_000
    curate = CurateHours(storage, clock, fmt, grace=600, part_bytes=target)
    raw = AggregateHours(storage).raw_hours()
    results = curate.changed(raw)
    assert [r.hour for r in results] == [H1, H2]
    for hour in (H1, H2):
        same_readings(curated_readings(storage, fmt, hour), in_order(truth[hour]))
        manifest = read_manifest(storage, hour)
        assert manifest is not None
        assert len(manifest.parts) > 1
        assert all(p.bytes <= target for p in manifest.parts)
        assert [len(storage.get(p.key)) for p in manifest.parts] == [
            p.bytes for p in manifest.parts
        ]
        assert sum(p.readings for p in manifest.parts) == len(truth[hour]) == manifest.readings
    # a second run changes nothing: no hour to do, every object as it was
    before = {k: storage.get(k) for k in storage.list("curated/")}
    assert CurateHours(storage, clock, fmt, grace=600, part_bytes=target).changed(raw) == []
    assert {k: storage.get(k) for k in storage.list("curated/")} == before


def test_the_kept_copy_is_the_one_received_first(storage: Storage) -> None:
    first = Record("a", "v1", H1, H1 + timedelta(seconds=1), {"x": 1})
    later = Record("a", "v1", H1, H1 + timedelta(seconds=5), {"x": 2})
    write_raw(storage, H1, "b", [later])
    write_raw(storage, H1, "a", [first])
    curate = CurateHours(storage, after(H1, 600), JsonLinesGzip(), grace=600)
    curate.changed(AggregateHours(storage).raw_hours())
    assert curated_readings(storage, JsonLinesGzip(), H1) == [first]


def test_an_open_hour_waits_for_the_grace_period(storage: Storage) -> None:
    write_raw(storage, H1, "a", [reading(random.Random(1), "v1", H1, 1)])
    raw = AggregateHours(storage).raw_hours()
    assert CurateHours(storage, after(H1, 599), JsonLinesGzip(), grace=600).changed(raw) == []
    assert storage.list("curated/") == []
    assert len(CurateHours(storage, after(H1, 600), JsonLinesGzip(), grace=600)
               .changed(raw)) == 1


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_a_late_reading_re_curates_only_its_hour(storage: Storage, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]()
    rng = random.Random(3)
    truth = lake_with_copies(storage, rng)
    clock = after(H2, 600)
    CurateHours(storage, clock, fmt, grace=600, part_bytes=30_000).changed(
        AggregateHours(storage).raw_hours())
    h2_before = {k: storage.get(k) for k in storage.list(curated_prefix(H2))}
    h1_before = set(storage.list(curated_prefix(H1)))
    late = Record("late", "v0", H1 + timedelta(minutes=1), clock.now(), {"Vehicle.Speed": 1.5})
    write_raw(storage, H1, "20261129T0300-late", [late])
    results = CurateHours(storage, clock, fmt, grace=600, part_bytes=30_000).changed(
        AggregateHours(storage).raw_hours())
    assert [r.hour for r in results] == [H1]
    assert results[0].removed > 0  # the earlier version's parts are gone
    assert {k: storage.get(k) for k in storage.list(curated_prefix(H2))} == h2_before
    assert set(storage.list(curated_prefix(H1))) != h1_before
    same_readings(curated_readings(storage, fmt, H1), in_order([*truth[H1], late]))


def test_curation_leaves_the_aggregates_byte_for_byte_as_they_were(tmp_path: Path) -> None:
    plain, curated = MemoryStorage(), MemoryStorage()
    for s in (plain, curated):
        lake_with_copies(s, random.Random(7))
    AggregateHours(plain).changed()
    service = AggregateHours(curated)
    curate = CurateHours(curated, after(H2, 600), ParquetFormat(), grace=600)
    raw = service.raw_hours()
    service.changed(inputs=curate.aggregation_inputs(raw))
    curate.changed(raw)
    assert curated.list("curated/")
    for hour in (H1, H2):
        key = lake.aggregate_key(hour)
        assert curated.get(key) == plain.get(key)


def test_raw_files_go_after_the_retention_and_never_before_curation(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "lake")
    truth = lake_with_copies(storage, random.Random(5))
    plain = MemoryStorage()
    lake_with_copies(plain, random.Random(5))
    clock = after(H2, 0)  # H1 closed (grace 600 s), H2 not yet
    day = 86_400.0
    curate = CurateHours(storage, clock, JsonLinesGzip(), grace=600, raw_retention=day)
    service = AggregateHours(storage)

    def run() -> None:
        raw = service.raw_hours()
        service.changed(inputs=curate.aggregation_inputs(raw))
        curate.changed(raw)
        curate.retire()

    run()  # H1 curated; H2 still open
    late = Record("late", "v0", H1 + timedelta(minutes=1), clock.now(), {"Vehicle.Speed": 1.5})
    late_key = write_raw(storage, H1, "late", [late])
    write_raw(plain, H1, "late", [late])
    clock.advance(day)
    curate.retire()
    # H1's curated files went; the late one, not yet curated, stays; H2, never curated, too
    assert storage.list(lake.raw_prefix(H1)) == [late_key]
    assert len(storage.list(lake.raw_prefix(H2))) == 3
    # The next pass rebuilds H1 from its curated copy plus the late file, aggregates every
    # reading, then retires what it has curated.
    run()
    assert storage.list(lake.RAW) == []
    same_readings(curated_readings(storage, JsonLinesGzip(), H1), in_order([*truth[H1], late]))
    AggregateHours(plain).changed()
    for hour in (H1, H2):
        assert storage.get(lake.aggregate_key(hour)) == plain.get(lake.aggregate_key(hour))


def test_raw_files_expired_under_a_parquet_lake_lose_no_curated_reading(tmp_path: Path) -> None:
    """An S3 lifecycle rule may expire raw files whatever the format: with Parquet parts the
    curated hour is rebuilt from them plus the late file, and the aggregate is left as it
    was rather than rewritten from the late file alone."""
    storage = MemoryStorage()
    truth = lake_with_copies(storage, random.Random(9))
    clock = after(H2, 600)
    curate = CurateHours(storage, clock, ParquetFormat(), grace=600)
    service = AggregateHours(storage)
    raw = service.raw_hours()
    service.changed(inputs=curate.aggregation_inputs(raw))
    curate.changed(raw)
    before = storage.get(lake.aggregate_key(H1))
    for key in storage.list(lake.raw_prefix(H1)):  # expired by the lifecycle rule
        storage.delete(key)
    late = Record("late", "v0", H1 + timedelta(minutes=1), clock.now(), {"Vehicle.Speed": 1.5})
    write_raw(storage, H1, "late", [late])
    raw = service.raw_hours()
    service.changed(inputs=curate.aggregation_inputs(raw))
    assert [r.hour for r in curate.changed(raw)] == [H1]
    assert storage.get(lake.aggregate_key(H1)) == before
    same_readings(curated_readings(storage, ParquetFormat(), H1),
                  in_order([*truth[H1], late]))


def test_a_pass_killed_after_its_deletes_but_before_its_state_loses_nothing() -> None:
    """The state still names the parts that pass deleted: the next pass goes by the manifest
    (written before any delete), so the readings of retired raw files are not lost."""
    storage = MemoryStorage()
    truth = lake_with_copies(storage, random.Random(11))
    clock = after(H2, 600)
    curate = CurateHours(storage, clock, JsonLinesGzip(), grace=600, part_bytes=30_000)
    service = AggregateHours(storage)
    curate.changed(service.raw_hours())
    for key in storage.list(lake.raw_prefix(H1)):  # retired
        storage.delete(key)
    late = Record("late", "v0", H1 + timedelta(minutes=1), clock.now(), {"Vehicle.Speed": 1.5})
    write_raw(storage, H1, "late", [late])
    late2 = Record("late2", "v0", H1 + timedelta(minutes=2), clock.now(), {"Vehicle.Speed": 2.5})
    # Dies between its deletes and `record`: the stale parts it deleted are still in the state.
    curate.write(H1, service.raw_hours()[lake.format_hour(H1)])
    write_raw(storage, H1, "late2", [late2])
    raw = service.raw_hours()
    service.changed(inputs=curate.aggregation_inputs(raw))
    assert [r.hour for r in curate.changed(raw)] == [H1]
    same_readings(curated_readings(storage, JsonLinesGzip(), H1),
                  in_order([*truth[H1], late, late2]))
