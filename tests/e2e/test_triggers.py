"""`telemetry triggers` on a running pipeline: each trigger of ADR 0001 driven across its
threshold (lowered by its setting where waiting out the default would take minutes), seen to
fire with exit status 1, and seen to clear again."""

from __future__ import annotations

import json
import shlex
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.support import moto as moto_server

pytestmark = pytest.mark.e2e

# Long enough that a loaded machine starting `worker --once` and then `triggers` (boto3 and all)
# stays within it; the tests wait it out to see the triggers clear.
WINDOW = 10.0


def _triggers(p: Pipeline) -> tuple[int, dict[str, dict[str, Any]]]:
    out = p.cli("triggers", "--json")
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    assert doc["fires"] == (out.returncode == 1)
    return out.returncode, {t["name"]: t for t in doc["triggers"]}


def _firing(triggers: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, t in triggers.items() if t["fires"]}


def _post(p: Pipeline, key: str, readings: list[dict[str, Any]]) -> None:
    r = httpx.post(p.url + "/v1/readings", json={"readings": readings},
                   headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 202, r.text


def _readings(n: int, tag: str, vehicle: str = "car-1") -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [{"vehicle_id": vehicle, "reading_id": f"{tag}-{i}", "ts": now.isoformat(),
             "signals": {"Vehicle.Speed": float(i)}} for i in range(n)]


def _fast_windows(p: Pipeline) -> None:
    p.env.update(TELEMETRY_TRIGGER_WINDOW=str(WINDOW), TELEMETRY_WORKER_STATE_EVERY="0.5")


def test_queue_age_send_rate_and_latency_fire_and_clear_on_the_embedded_default(
    pipeline: Pipeline,
) -> None:
    _fast_windows(pipeline)
    pipeline.env.update(
        TELEMETRY_TRIGGER_OLDEST_AGE="1",  # seconds
        TELEMETRY_TRIGGER_SEND_RATE="0.5",  # messages per second over the window
        TELEMETRY_TRIGGER_LATENCY_MARGIN="0",  # p99 limit = batch max age, 0.5 s
    )
    key = pipeline.create_key()
    pipeline.serve()
    for i in range(12):  # 12 requests: 12 messages
        _post(pipeline, key, _readings(5, f"r{i}"))

    # No worker yet: the oldest message ages past 1 s.
    time.sleep(1.5)
    rc, t = _triggers(pipeline)
    assert rc == 1 and _firing(t) == {"oldest_message_age"}, t
    assert t["oldest_message_age"]["value"] >= 1.5
    assert t["oldest_message_age"]["window"] == "now"
    assert t["p99_received_to_stored"]["value_text"] == "no data"

    # A worker drains it: the queue is empty again, but it saw 12 sends within the window, and
    # every reading waited over the 0.5 s limit before it was stored.
    done = pipeline.cli("worker", "--once")
    assert done.returncode == 0, done.stderr
    rc, t = _triggers(pipeline)
    assert rc == 1 and _firing(t) == {"send_rate", "p99_received_to_stored"}, t
    assert t["oldest_message_age"]["value"] == 0
    assert t["send_rate"]["value"] == pytest.approx(12 / WINDOW)
    assert t["p99_received_to_stored"]["value"] >= 1.5

    # The window passes with nothing new: every trigger clears.
    time.sleep(WINDOW + 0.5)
    rc, t = _triggers(pipeline)
    assert rc == 0 and not _firing(t), t


def test_duplicates_past_one_percent_fire_and_clear(pipeline: Pipeline) -> None:
    key = pipeline.create_key()
    pipeline.serve()
    _post(pipeline, key, _readings(100, "a"))
    _post(pipeline, key, _readings(2, "a"))  # the same two readings again: 2% duplicates
    assert pipeline.cli("worker", "--once").returncode == 0
    assert pipeline.cli("aggregate").returncode == 0
    rc, t = _triggers(pipeline)
    assert rc == 1 and _firing(t) == {"duplicate_rate"}, t
    assert t["duplicate_rate"]["value"] == pytest.approx(0.02)
    assert "102 raw lines, 100 distinct" in t["duplicate_rate"]["source"]

    _post(pipeline, key, _readings(200, "b"))  # 302 lines for 300 readings: 0.67%
    assert pipeline.cli("worker", "--once").returncode == 0
    assert pipeline.cli("aggregate").returncode == 0
    rc, t = _triggers(pipeline)
    assert rc == 0, t
    assert t["duplicate_rate"]["value"] == pytest.approx(2 / 300)

    # The report of the same lake: the hour's vehicle, its duplicates, the triggers table.
    out = pipeline.cli("report", "--vehicle", "car-1", "--out", str(pipeline.data_dir / "r.html"))
    assert out.returncode == 0, out.stderr
    page = (pipeline.data_dir / "r.html").read_text()
    assert out.stdout.strip() == str(pipeline.data_dir / "r.html")
    assert "300 distinct readings" in page and "302 raw lines" in page
    assert "<td>duplicate_rate</td>" in page and 'data-chart="signal:Vehicle.Speed"' in page


def test_oldest_age_on_sqs_from_what_the_worker_received(pipeline: Pipeline) -> None:
    """SQS has no oldest age but in CloudWatch: a held-back worker reports how long the
    messages it received had waited, and the trigger clears once the window has passed."""
    pipeline.env.update(moto_server.server_env({}))
    name = moto_server.unique("trig")
    init = pipeline.cli("aws", "init", "--queue", name, "--bucket", name)
    assert init.returncode == 0, init.stderr
    pipeline.env.update(dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in init.stdout.splitlines() if line.startswith("export ")
    ))
    _fast_windows(pipeline)
    pipeline.env["TELEMETRY_TRIGGER_OLDEST_AGE"] = "1"
    key = pipeline.create_key()
    pipeline.serve()
    _post(pipeline, key, _readings(10, "s"))

    rc, t = _triggers(pipeline)  # messages wait, and no worker has said anything yet
    assert rc == 0 and t["oldest_message_age"]["value"] is None, t
    assert "no worker has published" in t["oldest_message_age"]["source"]

    time.sleep(1.5)
    assert pipeline.cli("worker", "--once").returncode == 0
    rc, t = _triggers(pipeline)
    assert rc == 1 and "oldest_message_age" in _firing(t), t
    assert t["oldest_message_age"]["value"] >= 1.5
    assert t["p99_received_to_stored"]["value"] >= 1.5

    time.sleep(WINDOW + 0.5)
    rc, t = _triggers(pipeline)
    assert rc == 0, t
