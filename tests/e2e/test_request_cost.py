"""What one request may cost a running `serve`: no fan-out over event-time hours, and the worst
bodies within the limits never keep `/healthz` waiting."""

from __future__ import annotations

import gzip
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_one_request_cannot_fan_out_over_hours(pipeline: Pipeline) -> None:
    key = pipeline.create_key("car-*")
    pipeline.serve()
    now = datetime.now(UTC)
    # 1000 readings half an hour apart: 500 hours, all within the maximum lateness
    fan = [{"vehicle_id": "car-1", "ts": (now - timedelta(minutes=30 * i)).isoformat(),
            "signals": {"v": i}} for i in range(1000)]
    r = httpx.post(pipeline.url + "/v1/readings", json={"readings": fan},
                   headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 422, r.text[:300]
    assert "split it" in r.json()["extra"][0]["message"]
    done = pipeline.cli("worker", "--once")
    assert done.returncode == 0, done.stderr
    assert not list((pipeline.data_dir / "data" / "lake").rglob("*.jsonl"))


def _worst_bodies() -> list[tuple[str, bytes]]:
    now = datetime.now(UTC).isoformat()
    tiny = msgspec.json.encode({"vehicle_id": "car-1", "ts": now, "signals": {"a": 1}}) + b"\n"
    # 8 MiB inflated of the smallest readings: far more than the max batch
    many = tiny * (8 * 1024 * 1024 // len(tiny) - 1)
    # up to 8 MiB inflated of 1000 readings whose every signal breaks a rule: the most
    # problems a body within the limits can hold
    broken = {"vehicle_id": "car-1", "ts": now,
              "signals": {f"S{i}": "x" * 257 for i in range(28)}}
    worst = msgspec.json.encode({"readings": [broken] * 1000})
    assert len(worst) < 8 * 1024 * 1024
    return [("application/x-ndjson", gzip.compress(many)),
            ("application/json", gzip.compress(worst))]


def test_healthz_answers_within_a_second_while_the_worst_bodies_are_processed(
    pipeline: Pipeline,
) -> None:
    key = pipeline.create_key("car-*")
    pipeline.serve()
    bodies = _worst_bodies()
    waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=pipeline.url, timeout=10) as c:
            while not stop.is_set():
                t = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                waits.append(time.perf_counter() - t)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with httpx.Client(base_url=pipeline.url, timeout=60,
                          headers={"X-API-Key": key, "Content-Encoding": "gzip"}) as client:
            answers: list[float] = []
            for _ in range(3):
                for ctype, body in bodies:
                    assert len(body) < 1024 * 1024
                    t = time.perf_counter()
                    r = client.post("/v1/readings", content=body,
                                    headers={"Content-Type": ctype})
                    answers.append(time.perf_counter() - t)
                    assert r.status_code == 422, r.text[:300]
                    assert len(r.content) < 50_000
    finally:
        stop.set()
        prober.join()
    assert len(waits) > 10
    assert max(waits) < 1.0, sorted(waits)[-5:]
    print(f"healthz: {len(waits)} probes, slowest {max(waits) * 1000:.0f} ms; "
          f"worst bodies answered in {min(answers) * 1000:.0f}-{max(answers) * 1000:.0f} ms")
