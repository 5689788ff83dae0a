"""Three workers on one SQLite queue, SIGKILLed at random moments while readings keep coming,
restarted, killed again: every reading answered 202 ends up in the lake and is counted once,
and the queue passes `PRAGMA integrity_check` after every round of kills.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.e2e.test_crash_worker import (
    assert_queue_intact,
    check_ledger,
    crash_env,
    crash_seed,
    lake_dir,
    make_key,
    queue_file,
    raw_records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKERS = 3
KILLS = 2  # per worker
VISIBILITY = 2.0  # room for a worker starved of CPU to extend its claims in time


def _wait_started(p: Pipeline, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while "worker_started" not in p.log(name):
        assert proc.poll() is None and time.monotonic() < deadline, p.log(name)
        time.sleep(0.05)


def test_three_workers_killed_at_random_moments(pipeline: Pipeline) -> None:
    p = pipeline
    # Every kill costs the messages it held one receive: keep them off the dead-letter queue,
    # which this test is not about (nothing there is lost, but it is not in the lake either).
    p.env = {**crash_env(p.env, VISIBILITY), "TELEMETRY_MAX_RECEIVES": "100"}
    seed = crash_seed()
    key = make_key(p)
    p.serve()

    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ledger: list[str] = []
    stop = threading.Event()
    errors: list[str] = []

    def produce() -> None:
        """Small requests over two hours of event time, until stopped; the ledger is every id
        answered 202."""
        n = 0
        with httpx.Client(base_url=p.url, headers={"X-API-Key": key}, timeout=30) as client:
            while not stop.is_set():
                batch = [
                    {
                        "reading_id": f"r{n}-{i}",
                        "vehicle_id": f"car-{i % 4}",
                        "ts": (top - timedelta(seconds=1 + (n * 7 + i) % 7000)).isoformat(),
                        "signals": {"Vehicle.Speed": float(i), "Vehicle.Odometer": n * 0.1},
                    }
                    for i in range(10)
                ]
                r = client.post("/v1/readings", json={"readings": batch})
                if r.status_code != 202:
                    errors.append(r.text)
                    return
                ledger.extend(r.json()["reading_ids"])
                n += 1
                time.sleep(0.05)  # a steady trickle; CPU is for the process starts

    def slot(i: int, rng: random.Random) -> subprocess.Popen[bytes]:
        """One worker, killed at a random moment of its work KILLS times, restarted each time;
        the last one is left running."""
        for k in range(KILLS + 1):
            name = f"worker-{i}-{k}"
            proc = p.start("worker", log_name=name)
            _wait_started(p, proc, name)
            if k == KILLS:
                return proc
            time.sleep(rng.uniform(0.1, 1.5))  # while it receives, batches, writes, deletes
            proc.kill()
            assert proc.wait(timeout=10) == -9
            assert_queue_intact(queue_file(p))
        raise AssertionError("unreachable")

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        # Restarts overlap, so the slots cost a few process starts of wall time, not nine.
        with ThreadPoolExecutor(WORKERS) as pool:
            slots = [pool.submit(slot, i, random.Random(seed + i)) for i in range(WORKERS)]
            procs = [f.result() for f in slots]
    finally:
        stop.set()
        producer.join(timeout=30)
    assert not errors, errors[:3]
    assert len(ledger) > 0

    # The last workers drain everything, the dead workers' claims included once they expire.
    want = set(ledger)
    deadline = time.monotonic() + 40
    while not want <= {x["reading_id"] for x in raw_records(lake_dir(p))}:
        assert time.monotonic() < deadline, f"CRASH_SEED={seed}: readings answered 202 not stored"
        time.sleep(0.3)
    for proc in procs:
        assert p.stop(proc) == 0
    assert_queue_intact(queue_file(p))
    check_ledger(p, ledger)
