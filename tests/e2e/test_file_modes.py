"""Everything the pipeline writes is for the service's user alone, whatever the umask: the data
folder and every folder under it 0700, every file 0600 (queue with its -wal and -shm, lake,
partials, aggregates, aggregation state, keys)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_every_file_the_pipeline_writes_is_private(pipeline: Pipeline) -> None:
    old = os.umask(0)  # the processes inherit it: the most permissive there is
    try:
        key = pipeline.create_key("car-*")
        pipeline.serve()
        t0 = datetime.now(UTC) - timedelta(minutes=30)
        readings = [{"vehicle_id": "car-1", "ts": (t0 + timedelta(seconds=i)).isoformat(),
                     "signals": {"Speed": float(i)}} for i in range(20)]
        r = httpx.post(pipeline.url + "/v1/readings", json={"readings": readings},
                       headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 202, r.text
        for args in (("worker", "--once"), ("aggregate",)):
            done = pipeline.cli(*args)
            assert done.returncode == 0, done.stderr
    finally:
        os.umask(old)
    data = pipeline.data_dir / "data"
    modes = {data: stat.S_IMODE(data.stat().st_mode)}
    for path in data.rglob("*"):
        modes[path] = stat.S_IMODE(path.lstat().st_mode)
    names = {p.name for p in modes}
    # serve still holds the queue open, so its WAL files are there to be checked
    assert {"queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm", "keys.json",
            "vehicles.jsonl"} <= names, sorted(names)
    assert (data / "lake" / "aggregates" / "_state" / "hourly.json") in modes
    assert any(p.suffix == ".jsonl" and "raw" in p.parts for p in modes)
    wrong = {str(p.relative_to(pipeline.data_dir)): oct(m) for p, m in modes.items()
             if m != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong
