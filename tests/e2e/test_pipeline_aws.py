"""serve + worker + aggregate as processes on SQS + S3 (a moto server on loopback): every
accepted reading stored once and counted once. The queue and bucket come from
`telemetry aws init`, as an operator would make them."""

from __future__ import annotations

import gzip
import json
import shlex
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.support import moto as moto_server

pytestmark = pytest.mark.e2e


def _objects(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _lines(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for key, data in sorted(objects.items()):
        text = gzip.decompress(data) if key.endswith(".gz") else data
        out.extend(json.loads(line) for line in text.decode().splitlines())
    return out


def test_every_accepted_reading_is_stored_once_and_counted_once_on_aws(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.env.update(moto_server.server_env({}))
    pipeline.env["TELEMETRY_COMPRESS"] = "true"
    name = moto_server.unique("e2e")
    init = pipeline.cli("aws", "init", "--queue", name, "--bucket", name, "--prefix", "fleet",
                        "--visibility-timeout", "30")
    assert init.returncode == 0, init.stderr
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in init.stdout.splitlines() if line.startswith("export ")
    )
    assert exports["TELEMETRY_QUEUE"] == "sqs" and exports["TELEMETRY_STORAGE"] == "s3"
    assert exports["TELEMETRY_S3_PREFIX"] == "fleet"
    pipeline.env.update(exports)

    key = pipeline.create_key("car-*")
    pipeline.serve()
    ready = httpx.get(pipeline.ops_url + "/readyz", timeout=10)  # GetQueueAttributes, HeadBucket
    assert ready.status_code == 200, ready.text
    worker = pipeline.start("worker", log_name="worker")
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        {
            "vehicle_id": f"car-{v}",
            "ts": (now - timedelta(minutes=90) + timedelta(seconds=i * 30)).isoformat(),
            "signals": {"Vehicle.Speed": float(i % 50), "Vehicle.IsMoving": i % 2 == 0,
                        "Note": "\uffff" if i == 7 else "ok"},  # one body through base64
        }
        for v in range(3)
        for i in range(150)
    ]
    accepted: list[str] = []
    with httpx.Client(base_url=pipeline.url, headers={"X-API-Key": key}, timeout=30) as client:
        for start in range(0, len(readings), 100):
            r = client.post("/v1/readings", json={"readings": readings[start : start + 100]})
            assert r.status_code == 202, r.text
            accepted.extend(r.json()["reading_ids"])
        bad = client.post("/v1/readings", json={"readings": [readings[0], {"vehicle_id": "x"}]})
        assert bad.status_code == 422
    assert len(set(accepted)) == len(readings)

    # SIGTERM once the worker has its handlers (a loaded machine starts Python slowly):
    # flush, delete, exit 0; then drain anything it had not received.
    deadline = time.monotonic() + 60
    while '"worker_started"' not in pipeline.log("worker"):
        assert worker.poll() is None and time.monotonic() < deadline, pipeline.log("worker")
        time.sleep(0.1)
    assert pipeline.stop(worker, timeout=60) == 0, pipeline.log("worker")
    once = pipeline.cli("worker", "--once", timeout=120)
    assert once.returncode == 0, once.stderr
    agg = pipeline.cli("aggregate", timeout=120)
    assert agg.returncode == 0, agg.stderr

    with monkeypatch.context() as mp:
        for k, v in pipeline.env.items():
            if k.startswith("AWS_"):
                mp.setenv(k, v)
        s3 = boto3.client("s3")
        raw = _objects(s3, name, "fleet/raw/")
        aggregates = _objects(s3, name, "fleet/aggregates/hourly/")
        head = s3.head_object(Bucket=name, Key=next(iter(raw)))
    assert all(k.endswith(".jsonl.gz") and "/year=" in k for k in raw)
    assert head["ContentEncoding"] == "gzip" and head["ContentType"] == "application/x-ndjson"
    stored = Counter(r["reading_id"] for r in _lines(raw))
    assert set(stored) == set(accepted)
    assert all(n == 1 for n in stored.values())
    rows = _lines(aggregates)
    assert sum(r["readings"] for r in rows) == len(accepted)
    by_vehicle: Counter[str] = Counter()
    for r in rows:
        by_vehicle[r["vehicle_id"]] += r["readings"]
    assert by_vehicle == {f"car-{v}": 150 for v in range(3)}
    assert len({r["hour_start"] for r in rows}) >= 2
    written = [json.loads(line) for line in pipeline.log("worker").splitlines()
               if '"file_written"' in line]
    assert written and all(w["key"].startswith("raw/") for w in written)


def test_demo_runs_on_sqs_and_s3_with_its_own_moto_server(pipeline: Pipeline) -> None:
    out = pipeline.cli("demo", "--backend", "aws", "--vehicles", "4", "--rate", "2",
                       "--duration", "3", "--batch", "10", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SQS + S3 on a local moto server at http://127.0.0.1:" in out.stdout
    assert "-> PASS" in out.stdout
