"""Late and duplicate data through real `serve`, `worker` and `aggregate` processes.

A reading for an hour that was already aggregated marks that hour for re-aggregation; the next
`telemetry aggregate` recomputes that hour whole, leaves the other hours alone, and the result
does not depend on arrival order, redelivery or duplicates in the raw files."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from telemetry.domain import lake as keys
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def _reading(vid: str, ts: datetime, speed: float, rid: str | None = None, **more: Any) -> dict:
    r: dict[str, Any] = {"vehicle_id": vid, "ts": ts.isoformat(),
                         "signals": {"Vehicle.Speed": speed, **more}}
    if rid is not None:
        r["reading_id"] = rid
    return r


def _stored(lake: Path) -> Counter[str]:
    return Counter(json.loads(line)["reading_id"] for f in (lake / "raw").rglob("*.jsonl")
                   for line in f.read_text().splitlines())


def _expected(hour: datetime, posted: list[tuple[str, dict]]) -> dict[str, dict]:
    """The aggregate lines of `hour`, recomputed from what was posted (one per reading_id)."""
    distinct: dict[str, dict] = {}
    for rid, r in posted:
        distinct.setdefault(rid, r)  # copies of a reading: the first received counts
    by_vehicle: dict[str, list[dict]] = {}
    for r in distinct.values():
        by_vehicle.setdefault(r["vehicle_id"], []).append(r)
    out = {}
    for vid, rs in by_vehicle.items():
        ts = [datetime.fromisoformat(r["ts"]) for r in rs]
        columns: dict[str, list[float]] = {}
        for r in rs:
            for name, v in r["signals"].items():
                if type(v) in (int, float):  # bools and strings have no statistics
                    columns.setdefault(name, []).append(v)
        out[vid] = {
            "hour_start": hour, "vehicle_id": vid, "readings": len(rs),
            "first_ts": min(ts), "last_ts": max(ts),
            "signals": {n: {"count": len(vs), "min": min(vs), "max": max(vs),
                            "mean": math.fsum(vs) / len(vs)} for n, vs in columns.items()},
        }
    return out


def _lines(path: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for f in ("hour_start", "first_ts", "last_ts"):
            assert row[f].endswith("Z"), row
            row[f] = datetime.fromisoformat(row[f])
        rows[row["vehicle_id"]] = row
    return rows


def _aggregated(out: Any) -> dict[str, dict]:
    """hour -> its `hour_aggregated` event, from one `telemetry aggregate` run."""
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    done = [e for e in events if e["event"] == "hour_aggregated"]
    assert f"aggregated {len(done)} hour(s)" in out.stdout, (out.stdout, out.stderr)
    by_hour = {e["hour"]: e for e in done}
    assert len(by_hour) == len(done), done  # no hour twice in one run
    return by_hour


def _snapshot(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_late_and_duplicate_readings_reaggregate_only_their_hour(pipeline: Pipeline) -> None:
    key = pipeline.create_key("car-*")
    pipeline.serve()
    worker = pipeline.start("worker", log_name="worker")
    lake = pipeline.data_dir / "data" / "lake"

    # Three hours wholly in the past, whatever the wall clock: no reading straddles an hour
    # boundary, none is in the future, and a run crossing the hour changes nothing.
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hour_a, hour_b, hour_c = (top - timedelta(hours=h) for h in (3, 2, 1))
    name_a, name_b, name_c = map(keys.format_hour, (hour_a, hour_b, hour_c))
    file_of = {h: lake / keys.aggregate_key(h) for h in (hour_a, hour_b, hour_c)}

    posted: dict[datetime, list[tuple[str, dict]]] = {hour_a: [], hour_b: [], hour_c: []}
    expected_raw: Counter[str] = Counter()

    def post(client: httpx.Client, hour: datetime, readings: list[dict]) -> list[str]:
        r = client.post("/v1/readings", json={"readings": readings})
        assert r.status_code == 202, r.text
        ids = r.json()["reading_ids"]
        assert len(ids) == len(readings)
        posted[hour].extend(zip(ids, readings, strict=True))
        expected_raw.update(ids)
        return ids

    def stored_by_worker() -> None:
        deadline = time.monotonic() + 30
        while not _stored(lake) >= expected_raw:
            assert time.monotonic() < deadline, pipeline.log("worker")
            assert worker.poll() is None, pipeline.log("worker")
            time.sleep(0.1)

    # Hour A: car-1 with content-derived ids (enough readings for an ingest partial), car-2 with
    # its own ids. Hour B: both cars, a few readings. Hour C: car-3, ints and floats.
    a1 = [_reading("car-1", hour_a + timedelta(minutes=10, seconds=20 * i), 30.5 + 1.25 * i,
                   **{"Vehicle.IsMoving": True}) for i in range(12)]
    a2 = [_reading("car-2", hour_a + timedelta(minutes=20 + i), v, f"car-2-a-{i}")
          for i, v in enumerate([12.0, 7.5, 9.25])]
    b1 = [_reading("car-1", hour_b + timedelta(minutes=5 + i), 40.0 + i) for i in range(4)]
    b1 += [_reading("car-2", hour_b + timedelta(minutes=30 + i), 0.5 * i, f"car-2-b-{i}")
           for i in range(2)]
    c1 = [_reading("car-3", hour_c + timedelta(minutes=40, seconds=15 * i), 0.1 * i,
                   **{"Powertrain.Rpm": 800 + 37 * i}) for i in range(12)]
    with httpx.Client(base_url=pipeline.url, headers={"X-API-Key": key}) as client:
        post(client, hour_a, a1)
        post(client, hour_a, a2)
        post(client, hour_b, b1)
        c1_ids = post(client, hour_c, c1)
        stored_by_worker()

        first = _aggregated(pipeline.cli("aggregate"))
        assert set(first) == {name_a, name_b, name_c}
        for h in (hour_a, hour_b, hour_c):
            assert _lines(file_of[h]) == _expected(h, posted[h])
        before = {h: _snapshot(f) for h, f in file_of.items()}

        # Late data for hour A, after A was aggregated: a new reading of each car (car-1's
        # after its last, with a new maximum; car-2's before its first, with a new minimum),
        # and car-2's second reading sent again (same reading_id: a duplicate in raw).
        # Hour C: its whole request delivered again (the same content-derived ids).
        late = [_reading("car-1", hour_a + timedelta(minutes=55), 99.75,
                         **{"Vehicle.IsMoving": False}),
                _reading("car-2", hour_a + timedelta(minutes=2), 3.5, "car-2-a-late"),
                a2[1]]
        late_ids = post(client, hour_a, late)
        assert late_ids[2] == "car-2-a-1"
        assert post(client, hour_c, c1) == c1_ids
        stored_by_worker()

    raw = _stored(lake)
    assert raw["car-2-a-1"] == 2 and all(raw[i] == 2 for i in c1_ids)  # duplicates in raw
    second = _aggregated(pipeline.cli("aggregate"))
    assert set(second) == {name_a, name_c}  # B's raw files did not change

    # A, recomputed whole: every distinct reading once, the late ones included.
    rows = _lines(file_of[hour_a])
    assert rows == _expected(hour_a, posted[hour_a])
    assert {v: r["readings"] for v, r in rows.items()} == {"car-1": 13, "car-2": 4}
    assert rows["car-1"]["signals"]["Vehicle.Speed"]["max"] == 99.75
    assert rows["car-2"]["signals"]["Vehicle.Speed"]["min"] == 3.5
    assert rows["car-2"]["first_ts"] == hour_a + timedelta(minutes=2)
    assert _snapshot(file_of[hour_a])[::2] != before[hour_a][::2]  # a new file, new bytes
    a_files = list((lake / keys.raw_prefix(hour_a)).glob("*.jsonl"))
    a_lines = sum(len(f.read_text().splitlines()) for f in a_files)
    assert (second[name_a]["files"], second[name_a]["raw_records"], second[name_a]["readings"]) \
        == (len(a_files), a_lines, 17)
    assert a_lines == 18  # the duplicate is in raw, and counted once
    # B: not rewritten. C: rewritten, byte for byte the same (redelivery changes nothing).
    assert _snapshot(file_of[hour_b]) == before[hour_b]
    assert file_of[hour_c].read_bytes() == before[hour_c][2]
    assert second[name_c]["readings"] == 12 and second[name_c]["raw_records"] == 24

    after = {h: _snapshot(f) for h, f in file_of.items()}
    assert _aggregated(pipeline.cli("aggregate")) == {}  # nothing changed since
    assert {h: _snapshot(f) for h, f in file_of.items()} == after

    # The worker writes its partial aggregates at shutdown. From scratch, with them (C's
    # redelivered partial is dropped as a copy) or from the lines (A's duplicate is a single
    # reading): the same bytes as the incremental runs.
    assert pipeline.stop(worker) == 0, pipeline.log("worker")
    shutil.rmtree(lake / "aggregates")
    scratch = _aggregated(pipeline.cli("aggregate"))
    assert set(scratch) == {name_a, name_b, name_c}
    assert scratch[name_c]["files_from_partials"] == 2, scratch
    assert {h: f.read_bytes() for h, f in file_of.items()} == {
        h: s[2] for h, s in after.items()}
