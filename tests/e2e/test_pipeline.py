"""serve + worker + aggregate as processes: every accepted reading stored once, counted once."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def _raw_records(lake: Path) -> list[dict]:
    out = []
    for f in sorted((lake / "raw").rglob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


def _aggregates(lake: Path) -> list[dict]:
    out = []
    for f in sorted((lake / "aggregates" / "hourly").rglob("vehicles.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


def test_every_accepted_reading_is_stored_once_and_counted_once(pipeline: Pipeline) -> None:
    key = pipeline.create_key("car-*")
    pipeline.serve()
    worker = pipeline.start("worker", log_name="worker")
    deadline = time.monotonic() + 60
    # SIGTERM before the handlers are installed would kill it instead of stopping it.
    while "worker_started" not in pipeline.log("worker"):
        assert time.monotonic() < deadline and worker.poll() is None, pipeline.log("worker")
        time.sleep(0.1)
    now = datetime.now(UTC).replace(microsecond=0)
    # Two hours of event time: late data lands in its own hour.
    readings = [
        {
            "vehicle_id": f"car-{v}",
            "ts": (now - timedelta(minutes=90) + timedelta(seconds=i * 30)).isoformat(),
            "signals": {"Vehicle.Speed": float(i % 50), "Vehicle.IsMoving": i % 2 == 0},
        }
        for v in range(3)
        for i in range(150)
    ]
    accepted: list[str] = []
    with httpx.Client(base_url=pipeline.url, headers={"X-API-Key": key}) as client:
        for start in range(0, len(readings), 100):
            r = client.post("/v1/readings", json={"readings": readings[start : start + 100]})
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["accepted"] == len(body["reading_ids"]) == len(readings[start:start + 100])
            accepted.extend(body["reading_ids"])
        bad = client.post("/v1/readings", json={"readings": [readings[0], {"vehicle_id": "x"}]})
        assert bad.status_code == 422
        assert {p["index"] for p in bad.json()["extra"]} == {1}
    assert len(set(accepted)) == len(readings)

    # SIGTERM: flush, delete, exit 0; then drain anything it had not received.
    assert pipeline.stop(worker) == 0, pipeline.log("worker")
    once = pipeline.cli("worker", "--once")
    assert once.returncode == 0, once.stderr
    agg = pipeline.cli("aggregate")
    assert agg.returncode == 0, agg.stderr

    lake = pipeline.data_dir / "data" / "lake"
    stored = Counter(r["reading_id"] for r in _raw_records(lake))
    assert set(stored) == set(accepted)  # nothing of the rejected request, nothing lost
    assert all(n == 1 for n in stored.values())
    rows = _aggregates(lake)
    assert sum(r["readings"] for r in rows) == len(accepted)
    by_vehicle = Counter()
    for r in rows:
        by_vehicle[r["vehicle_id"]] += r["readings"]
    assert by_vehicle == {f"car-{v}": 150 for v in range(3)}
    assert len({r["hour_start"] for r in rows}) >= 2
    # The worker logged every file it wrote, with both latency distributions.
    written = [json.loads(line) for line in pipeline.log("worker").splitlines()
               if '"file_written"' in line]
    assert written and all({"key", "readings", "bytes", "received_to_stored", "ts_to_stored"}
                           <= set(w) for w in written)
    # Requests of one or two vehicles carried partial aggregates; the worker wrote them at
    # shutdown, and aggregation merged them. Without them, every line decoded: the same bytes.
    assert '"partials_written"' in pipeline.log("worker")
    hours = [json.loads(line) for line in (agg.stdout + agg.stderr).splitlines()
             if '"hour_aggregated"' in line]
    assert hours and any(h["files_from_partials"] > 0 for h in hours), agg.stderr
    partials = sorted((lake / "partials").rglob("*.jsonl"))
    assert partials
    merged = {f: f.read_bytes() for f in (lake / "aggregates" / "hourly").rglob("vehicles.jsonl")}
    for f in partials:
        f.unlink()
    (lake / "aggregates" / "_state" / "hourly.json").unlink()
    again = pipeline.cli("aggregate")
    assert again.returncode == 0, again.stderr
    assert {f: f.read_bytes() for f in merged} == merged
