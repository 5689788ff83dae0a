"""`telemetry serve` SIGKILLed in the middle of many concurrent requests, then restarted: every
request answered 202 is in the lake after a drain; requests that got no answer may or may not be.
Then killed at `ingest.after_enqueue`: a request enqueued but never answered is stored too.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.e2e.test_crash_worker import (
    assert_queue_intact,
    check_ledger,
    crash_env,
    make_key,
    post_all,
    queue_file,
    readings_for,
)

pytestmark = pytest.mark.e2e

CLIENTS = 8
PER_REQUEST = 20


def test_ingest_killed_mid_request(pipeline: Pipeline) -> None:
    p = pipeline
    p.env = crash_env(p.env)
    key = make_key(p)
    serve = p.serve()
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # Explicit reading ids: the set of everything sent is known, answered or not.
    readings = readings_for(top - timedelta(hours=1), 8000, vehicles=5)
    for i, r in enumerate(readings):
        r["reading_id"] = f"r{i:06d}"
    requests = [readings[i : i + PER_REQUEST] for i in range(0, len(readings), PER_REQUEST)]
    ledger: list[str] = []
    answered = threading.Semaphore(0)
    lock = threading.Lock()

    def send(client: httpx.Client, chunk: list[dict]) -> None:
        try:
            r = client.post("/v1/readings", json={"readings": chunk})
        except httpx.TransportError:
            return  # no answer: may or may not be stored
        assert r.status_code == 202, r.text
        ids = r.json()["reading_ids"]
        assert ids == [x["reading_id"] for x in chunk]
        with lock:
            ledger.extend(ids)
        answered.release()

    limits = httpx.Limits(max_connections=CLIENTS)
    with (
        httpx.Client(base_url=p.url, headers={"X-API-Key": key}, limits=limits) as client,
        ThreadPoolExecutor(CLIENTS) as pool,
    ):
        futures = [pool.submit(send, client, chunk) for chunk in requests]
        for _ in range(100):  # well into the stream, with requests in flight
            assert answered.acquire(timeout=30), p.log("serve")
        serve.kill()
        assert serve.wait(timeout=10) == -9
        for f in futures:
            f.result()
    answered_when_killed = len(ledger)
    assert 100 <= answered_when_killed < len(readings)
    assert_queue_intact(queue_file(p))

    # Restart serve: it answers 202 again, into the same queue. This time it dies at the
    # crash point right after its second request is enqueued, before the answer.
    serve = p.serve(crash_at="ingest.after_enqueue:2")
    top_hour = top - timedelta(hours=2)
    ledger += post_all(p.url, key, readings_for(top_hour, 50, vehicles=5), per_request=50)
    unanswered = readings_for(top_hour, 10, vehicles=5, pad=1)
    for i, r in enumerate(unanswered):
        r["reading_id"] = f"u{i}"
    with pytest.raises(httpx.TransportError):
        httpx.post(p.url + "/v1/readings", json={"readings": unanswered},
                   headers={"X-API-Key": key}, timeout=30)
    assert serve.wait(timeout=10) == -9
    assert "crashpoint ingest.after_enqueue" in p.log("serve")
    assert_queue_intact(queue_file(p))

    once = p.cli("worker", "--once")
    assert once.returncode == 0, once.stderr
    never_answered = {r["reading_id"] for r in unanswered}
    sent = {r["reading_id"] for r in readings} | set(ledger) | never_answered
    stored = check_ledger(p, ledger, sent=sent)
    # Enqueued but never answered: stored all the same (a retry by the client would carry the
    # same reading ids, and count once).
    assert never_answered <= set(stored)
