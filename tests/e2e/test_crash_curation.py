"""`telemetry aggregate` killed (SIGKILL) while it rewrites a curated hour, on the filesystem
lake and on S3 (the shared moto server): the hour's manifest names either the old parts or the
new ones, all there and readable, and the next run completes the hour."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain import lake
from telemetry.domain.curation import JsonLinesGzip, curated_prefix, read_manifest
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import Record, encode_records
from tests.support import crash

pytestmark = pytest.mark.e2e

HOUR = datetime(2026, 11, 29, 1, tzinfo=UTC)
FMT = JsonLinesGzip()


def aggregate(env: dict[str, str], point: str | None = None) -> subprocess.CompletedProcess[str]:
    """`telemetry aggregate`; with `point`, through the launcher that arms it."""
    start = [sys.executable, "-m", "telemetry"] if point is None else crash.command(point)
    return subprocess.run([*start, "aggregate", "--jobs", "1"], cwd=crash.REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def records(first: int, n: int) -> list[Record]:
    return [
        Record(f"r{i}", f"car-{i % 3}", HOUR + timedelta(seconds=i % 3600), HOUR,
               {"Vehicle.Speed": float(i % 90), "Vehicle.Note": f"{i:08d}" * 8})
        for i in range(first, first + n)
    ]


def curated(storage: Storage) -> set[str]:
    """The reading ids the manifest's parts hold; every part it names must be readable."""
    manifest = read_manifest(storage, HOUR)
    assert manifest is not None
    ids = [r.reading_id for p in manifest.parts for r in FMT.decode(storage.get(p.key))]
    assert len(ids) == len(set(ids)) == manifest.readings
    return set(ids)


@contextlib.contextmanager
def _lake(backend: str, tmp_path: Path, env: dict[str, str]) -> Iterator[Storage]:
    """The lake the test looks at, and `env` pointed at it for the processes."""
    if backend == "filesystem":
        yield FilesystemStorage(tmp_path / "data" / "lake")
        return
    from tests.support import moto as moto_server

    with moto_server.aws_target("moto_server") as target:
        storage = target.storage("fleet")
        env.update(moto_server.server_env({}))
        env.update(TELEMETRY_STORAGE="s3", TELEMETRY_S3_BUCKET=storage.bucket,
                   TELEMETRY_S3_PREFIX="fleet")
        yield storage


@pytest.mark.parametrize("backend", ["filesystem", "s3"])
@pytest.mark.parametrize("point", ["curate.after_part:2", "curate.after_manifest"])
def test_a_killed_curation_leaves_the_old_or_the_new_hour_and_the_next_run_completes_it(
    tmp_path: Path, point: str, backend: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.update(TELEMETRY_DATA_DIR=str(tmp_path / "data"), TELEMETRY_CURATED_PART_BYTES="4000")
    with _lake(backend, tmp_path, env) as storage:
        _kill_and_complete(storage, env, point)


def _kill_and_complete(storage: Storage, env: dict[str, str], point: str) -> None:
    storage.put(lake.raw_key(HOUR, "a", False), encode_records(records(0, 300)))
    out = aggregate(env)
    assert out.returncode == 0, out.stderr
    assert "curated 1 hour(s)" in out.stdout
    old = curated(storage)
    assert old == {f"r{i}" for i in range(300)}
    storage.put(lake.raw_key(HOUR, "b", False), encode_records(records(200, 200)))  # late

    out = aggregate(env, point)
    assert out.returncode == -9, out.stderr
    assert f"crashpoint {point.partition(':')[0]}" in out.stderr
    new = {f"r{i}" for i in range(400)}
    assert curated(storage) == (old if point.startswith("curate.after_part") else new)

    out = aggregate(env)
    assert out.returncode == 0, out.stderr
    assert "curated 1 hour(s)" in out.stdout
    assert curated(storage) == new
    manifest = read_manifest(storage, HOUR)
    assert manifest is not None
    assert storage.list(curated_prefix(HOUR)) == sorted(
        [*(p.key for p in manifest.parts), curated_prefix(HOUR) + "_manifest.json"])
    assert "curated 0 hour(s)" in aggregate(env).stdout
