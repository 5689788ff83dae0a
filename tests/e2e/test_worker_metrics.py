"""The worker's /metrics, scraped over HTTP while it runs, agree with what the lake holds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from telemetry.entrypoints.loopback import free_port
from tests.e2e.conftest import Pipeline
from tests.prometheus_text import samples

pytestmark = pytest.mark.e2e


def _scrape(url: str) -> dict[str, float]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(r.text)


def test_worker_metrics_agree_with_the_lake(pipeline: Pipeline) -> None:
    port = free_port()
    pipeline.env["TELEMETRY_WORKER_METRICS_PORT"] = str(port)
    key = pipeline.create_key()
    pipeline.serve()
    worker = pipeline.start("worker", log_name="worker")
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        assert worker.poll() is None, pipeline.log("worker")
        try:
            before = _scrape(url)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, pipeline.log("worker")
            time.sleep(0.1)
    assert before["telemetry_worker_readings_total"] == 0

    now = datetime.now(UTC).isoformat()
    sent = 0
    for i in range(8):
        readings = [{"vehicle_id": f"car-{v}", "ts": now, "reading_id": f"m{i}-{v}",
                     "signals": {"Vehicle.Speed": float(v)}} for v in range(50)]
        r = httpx.post(pipeline.url + "/v1/readings", json={"readings": readings},
                       headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 202, r.text
        sent += len(readings)

    lake = pipeline.data_dir / "data" / "lake"
    deadline = time.monotonic() + 30
    while True:
        m = _scrape(url)
        if m["telemetry_worker_readings_total"] >= sent:
            break
        assert time.monotonic() < deadline, (m, pipeline.log("worker"))
        time.sleep(0.2)
    files = sorted(p for p in (lake / "raw").rglob("*.jsonl"))
    lines = sum(len(f.read_bytes().splitlines()) for f in files)
    assert m["telemetry_worker_readings_total"] == lines == sent
    assert m["telemetry_worker_files_total"] == len(files)
    assert m["telemetry_worker_written_bytes_total"] == sum(f.stat().st_size for f in files)
    assert m["telemetry_worker_messages_received_total"] == 8
    for h in ("received_to_stored", "ts_to_stored"):
        name = f"telemetry_worker_{h}_seconds"
        assert m[f"{name}_count"] == sent
        assert m[f"{name}_bucket{{le=+Inf}}"] == sent
        assert 0 < m[f"{name}_sum"] < sent * 60
        # the batch max age is 0.5 s: every reading was stored within a minute
        assert m[f"{name}_bucket{{le=60.0}}"] == sent
    assert m["telemetry_worker_retries_total"] == 0
    assert m["telemetry_worker_fault_episodes_total"] == 0

    # The queue's gauges are refreshed every few seconds: empty once drained.
    deadline = time.monotonic() + 15
    while True:
        m = _scrape(url)
        if m.get("telemetry_queue_messages{state=in_flight}") == 0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.5)
    assert m["telemetry_queue_messages{state=visible}"] == 0
    assert m["telemetry_queue_dead_letter_messages"] == 0
    assert m["telemetry_queue_oldest_message_age_seconds"] == 0
    assert m["telemetry_queue_depth_up"] == 1
    assert pipeline.stop(worker) == 0
    assert _published(lake)


def _published(lake: Path) -> list[Path]:
    return list((lake / "_state" / "workers").glob("*.json"))


def test_a_taken_metrics_port_stops_the_worker_naming_the_setting(pipeline: Pipeline) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        pipeline.env["TELEMETRY_WORKER_METRICS_PORT"] = str(s.getsockname()[1])
        out = pipeline.cli("worker", "--once")
    assert out.returncode == 2
    assert "TELEMETRY_WORKER_METRICS_PORT" in out.stderr
    assert "Traceback" not in out.stderr


def test_ingest_metrics_sum_over_its_processes(pipeline: Pipeline) -> None:
    """`serve --workers 2` shares one port: whichever process answers a scrape, it counts the
    requests of both."""
    key = pipeline.create_key()
    # both processes bind the operations port too (SO_REUSEPORT)
    serve = pipeline.serve("--workers", "2", timeout=60)
    pids: set[str] = set()
    for i in range(40):  # each on a new connection: both processes answer some
        r = pipeline.post_one(key, f"p{i}")
        assert r.status_code == 202, r.text
    for _ in range(10):
        with httpx.Client() as c:
            m = samples(c.get(pipeline.ops_url + "/metrics", timeout=10).text)
        assert m["telemetry_readings_accepted_total"] == 40
        assert m["telemetry_ingest_requests_total{reason=accepted,status=202}"] == 40
        assert m["telemetry_enqueue_seconds_count{outcome=ok}"] == 40
        pids |= {k for k in m if k.startswith("telemetry_process_start_time_seconds")}
    assert len(pids) == 2, pids
    assert pipeline.stop(serve) == 0
