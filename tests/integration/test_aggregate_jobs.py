"""`telemetry aggregate --jobs N` in real processes: hours in parallel, or one hour's files
split over processes, write exactly what one process writes."""

from __future__ import annotations

import gzip
import mmap
import random
from datetime import timedelta
from pathlib import Path

import pytest

from telemetry.adapters import filesystem
from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import aggregation, lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.readings import Record, encode_record
from telemetry.entrypoints import aggregate_jobs, cli
from tests.strategies import HOUR


def _write_lake(root: Path, hours: int, files: int, seed: int = 3) -> FilesystemStorage:
    """Readings spread over `files` files per hour, some copied into a second file, some
    copies differing (received later, other values), some signals bools or ints."""
    rng = random.Random(seed)
    storage = FilesystemStorage(root)
    for h in range(hours):
        hour = HOUR + timedelta(hours=h)
        parts: list[list[bytes]] = [[] for _ in range(files)]
        for i in range(300):
            ts = hour + timedelta(microseconds=rng.randrange(3_600_000_000))
            r = Record(f"{h}-{i}", f"v{i % 7}", ts, ts + timedelta(seconds=5),
                       {"speed": rng.uniform(0, 99), "rpm": rng.randrange(900, 3000),
                        "moving": rng.random() < 0.5})
            f = rng.randrange(files)
            parts[f].append(encode_record(r))
            if rng.random() < 0.1:
                parts[(f + 1) % files].append(encode_record(r))
            if rng.random() < 0.03:
                late = Record(r.reading_id, r.vehicle_id, r.ts,
                              r.received_at + timedelta(seconds=1), {"speed": 1e6})
                parts[rng.randrange(files)].append(encode_record(late))
        for f, lines in enumerate(parts):
            rng.shuffle(lines)
            storage.put(lake.raw_key(hour, f"part-{f}", False), b"\n".join(lines) + b"\n")
    return storage


def _serial(storage: FilesystemStorage, hours: int) -> dict[str, bytes]:
    service = AggregateHours(storage)
    out = {}
    for h in range(hours):
        hour = HOUR + timedelta(hours=h)
        service.hour(hour)
        out[lake.aggregate_key(hour)] = storage.get(lake.aggregate_key(hour))
        (storage.root / lake.aggregate_key(hour)).unlink()
    return out


@pytest.fixture(params=["compiled", "python"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With the compiled kernel, an hour it settles is not split; without it (as where it is not
    built), the split over processes runs. Processes are forked: they inherit the setting."""
    if request.param == "python":
        monkeypatch.setattr(aggregation, "hour_kernel", None)
    elif aggregation.hour_kernel is None:
        pytest.skip("telemetry._hourscan is not built")
    return str(request.param)


@pytest.mark.parametrize(("hours", "jobs"), [(2, 1), (2, 2), (1, 2)])
def test_files_mapped_into_memory_aggregate_as_their_bytes_do(
    tmp_path: Path, kernel: str, monkeypatch: pytest.MonkeyPatch, hours: int, jobs: int
) -> None:
    """A filesystem lake lends the scan its files mapped (`view`), gzip and empty files too;
    the aggregates are those of the same objects read as bytes from memory, in one process,
    hours over processes, or one hour split over forks that share the parent's mappings."""
    monkeypatch.setattr(filesystem, "MAP_MIN_BYTES", 1)  # map these small files too
    storage = _write_lake(tmp_path, hours, 3)
    keys = storage.list(lake.RAW)
    storage.put(keys[0][: -len(".jsonl")] + "-z.jsonl.gz", gzip.compress(storage.get(keys[0])))
    storage.put(keys[-1][: -len(".jsonl")] + "-empty.jsonl", b"")
    copy = MemoryStorage()
    for key in storage.list(lake.RAW):
        copy.put(key, storage.get(key))
    contents = AggregateHours(storage).contents(storage.list(lake.RAW))
    assert {type(c) for c in contents} == {memoryview, bytes}  # bytes: the gunzipped file
    # mapped, and the empty file's copy
    assert {type(c.obj) for c in contents if isinstance(c, memoryview)} == {mmap.mmap, bytes}
    del contents
    service = AggregateHours(storage)
    got = {r.key: storage.get(r.key)
           for r in service.changed(aggregate_jobs.runner(lambda: AggregateHours(storage), jobs))}
    want = {r.key: copy.get(r.key) for r in AggregateHours(copy).changed()}
    assert got == want and len(got) == hours


@pytest.mark.parametrize(("hours", "files", "jobs"), [(3, 4, 2), (1, 4, 2), (1, 5, 3), (2, 3, 3)])
def test_parallel_runs_write_what_one_process_writes(
    tmp_path: Path, hours: int, files: int, jobs: int, kernel: str
) -> None:
    storage = _write_lake(tmp_path, hours, files)
    expected = _serial(storage, hours)
    service = AggregateHours(storage)
    results = service.changed(aggregate_jobs.runner(lambda: AggregateHours(storage), jobs))
    assert [r.hour for r in results] == [HOUR + timedelta(hours=h) for h in range(hours)]
    for key, data in expected.items():
        assert storage.get(key) == data
    assert service.changed(aggregate_jobs.runner(lambda: AggregateHours(storage), jobs)) == []


def test_file_order_does_not_change_the_split(tmp_path: Path, kernel: str) -> None:
    storage = _write_lake(tmp_path, 1, 5)
    expected = _serial(storage, 1)[lake.aggregate_key(HOUR)]
    service = AggregateHours(storage)
    keys = service.hour_keys(HOUR)
    for order in (keys, keys[::-1], keys[2:] + keys[:2]):
        aggregate_jobs.split_hour(service, lambda: AggregateHours(storage), HOUR, order, 2)
        assert storage.get(lake.aggregate_key(HOUR)) == expected


def test_an_hour_the_kernel_settles_is_split_by_vehicle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if aggregation.hour_kernel is None:
        pytest.skip("telemetry._hourscan is not built")
    storage = _write_lake(tmp_path, 1, 4)
    expected = _serial(storage, 1)[lake.aggregate_key(HOUR)]

    def no_file_split(*_: object) -> None:
        raise AssertionError("the hour's files were split over processes")

    monkeypatch.setattr(aggregate_jobs, "shared_ids", no_file_split)
    service = AggregateHours(storage)
    for jobs in (2, 3):
        result = aggregate_jobs.split_hour(service, lambda: AggregateHours(storage), HOUR,
                                           service.hour_keys(HOUR), jobs)
        assert storage.get(lake.aggregate_key(HOUR)) == expected
        assert (result.files, result.from_partials) == (4, 0)


def test_a_bad_file_fails_the_hour_as_in_one_process(tmp_path: Path, kernel: str) -> None:
    storage = _write_lake(tmp_path, 1, 3)
    storage.put(lake.raw_key(HOUR, "bad", False), b'{"reading_id": 1}\n')
    service = AggregateHours(storage)
    with pytest.raises(ValueError, match="not a raw lake file"):
        aggregate_jobs.split_hour(service, lambda: AggregateHours(storage), HOUR,
                                  service.hour_keys(HOUR), 2)


def test_the_command_runs_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_DATA_DIR", str(tmp_path))
    storage = _write_lake(tmp_path / "lake", 2, 3)
    expected = _serial(storage, 2)
    assert cli.main(["aggregate", "--jobs", "2"]) == 0
    assert cli.main(["aggregate", "--jobs", "2", "--hour", "2026-11-29T01"]) == 0
    for key, data in expected.items():
        assert storage.get(key) == data
    assert cli.main(["aggregate", "--jobs", "0"]) == 2
