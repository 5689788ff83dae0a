"""`serve --workers 2`: a key gets the configured rate limit, not twice it."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.prometheus_text import samples

pytestmark = pytest.mark.e2e


def test_the_processes_of_serve_share_each_keys_bucket(pipeline: Pipeline) -> None:
    pipeline.env["TELEMETRY_RATE_BURST"] = "5"
    pipeline.env["TELEMETRY_RATE_LIMIT"] = "0.001"  # no refill within the test
    key = pipeline.create_key()
    serve = pipeline.serve("--workers", "2", timeout=60)
    statuses = []
    for i in range(30):  # each on a new connection: both processes answer some
        r = pipeline.post_one(key, f"r{i}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
    assert statuses.count(202) == 5, statuses
    assert statuses.count(429) == 25, statuses
    # Both processes answered some of them (each counts its own in the summed metrics).
    with httpx.Client() as c:
        m = samples(c.get(pipeline.ops_url + "/metrics", timeout=10).text)
    assert m["telemetry_ingest_requests_total{reason=rate_limited,status=429}"] == 25
    assert len({k for k in m if k.startswith("telemetry_process_start_time_seconds")}) == 2
    assert pipeline.stop(serve) == 0
