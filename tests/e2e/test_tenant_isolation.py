"""Two fleets on one deployment: one key's readings cannot touch another fleet's aggregates, even
when it reuses their reading ids. Through real `serve`, `worker --once` and `aggregate`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_a_key_reusing_another_fleets_reading_ids_leaves_its_aggregate_untouched(
    pipeline: Pipeline,
) -> None:
    trucks = pipeline.create_key("truck-*", name="trucks")
    cars = pipeline.create_key("car-*", name="cars")
    pipeline.serve()
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ids = [f"car-77:{i}" for i in range(12)]  # guessable: the client's own scheme

    def readings(vehicle: str, speeds: list[float]) -> list[dict[str, object]]:
        return [{"vehicle_id": vehicle, "reading_id": rid,
                 "ts": (t0 + timedelta(minutes=i)).isoformat(), "signals": {"Speed": v}}
                for i, (rid, v) in enumerate(zip(ids, speeds, strict=True))]

    own = [42.0, *(43.0 + i for i in range(10)), 77.0]
    with httpx.Client(base_url=pipeline.url, timeout=10) as client:
        # the attacker first, so that its copies are the ones received earlier
        stolen = client.post("/v1/readings", headers={"X-API-Key": trucks},
                             json={"readings": readings("truck-1", [99.0] * 12)})
        assert stolen.status_code == 202, stolen.text
        r = client.post("/v1/readings", headers={"X-API-Key": cars},
                        json={"readings": readings("car-77", own)})
        assert r.status_code == 202, r.text

    done = pipeline.cli("worker", "--once")
    assert done.returncode == 0, done.stderr
    done = pipeline.cli("aggregate")
    assert done.returncode == 0, done.stderr

    lines = [json.loads(line) for f in (pipeline.data_dir / "data" / "lake" / "aggregates")
             .rglob("vehicles.jsonl") for line in f.read_text().splitlines()]
    by_vehicle = {line["vehicle_id"]: line for line in lines}
    car = by_vehicle["car-77"]
    assert car["readings"] == 12
    assert car["signals"]["Speed"] == {"count": 12, "min": 42.0, "max": 77.0,
                                       "mean": sum(own) / 12}
    assert by_vehicle["truck-1"]["readings"] == 12

    # and one request cannot carry an identity twice
    twice = readings("car-77", own)[:2]
    twice[1]["reading_id"] = twice[0]["reading_id"]
    r = httpx.post(pipeline.url + "/v1/readings", headers={"X-API-Key": cars},
                   json={"readings": twice}, timeout=10)
    assert r.status_code == 422, r.text
    assert "readings 0 and 1" in r.text
