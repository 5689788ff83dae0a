"""`worker --once` after a killed worker: it says what it drained and what it left (in flight,
and until when; dead-lettered), and `--once --wait` drains what was in flight too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.readings import Reading
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import Settings
from tests.support import crash

pytestmark = pytest.mark.e2e

# Seconds: what the killed worker claimed comes back this soon; long enough that it is still in
# flight when the next two processes start on a busy machine.
VT = 10


def _telemetry(env: dict[str, str], *argv: str, crash_at: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    """`telemetry argv`; `crash_at`: through the launcher, which arms that crash point."""
    start = [sys.executable, "-m", "telemetry"] if crash_at is None else crash.command(crash_at)
    return subprocess.run([*start, *argv], env=env, cwd=crash.REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def _stored(lake: Path) -> set[str]:
    return {json.loads(line)["reading_id"] for f in (lake / "raw").rglob("*.jsonl")
            for line in f.read_text().splitlines()}


def test_once_reports_what_a_killed_worker_left_and_wait_drains_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, visibility_timeout=VT)
    # One message dead-lettered already: received as often as a queue allowing one receive
    # permits (the receive limit is the receiver's setting).
    strict = SqliteQueue(settings.queue_path, visibility_timeout=0, max_receives=1)
    strict.send([b"not an envelope"])
    assert [m.body for m in strict.receive(10)] == [b"not an envelope"]
    assert strict.receive(10) == []
    strict.close()
    container = create_container(settings)
    accept = container.accept_readings()
    now = datetime.now(UTC).replace(microsecond=0)
    ids: list[str] = []
    for m in range(5):  # five requests, five messages
        readings = [Reading(f"car-{m}", now - timedelta(seconds=i), {"Vehicle.Speed": float(i)})
                    for i in range(10)]
        accepted = accept.execute(readings, None)
        container.queue().send(accepted.messages)
        ids.extend(accepted.reading_ids)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.update(TELEMETRY_DATA_DIR=str(tmp_path), TELEMETRY_VISIBILITY_TIMEOUT=str(VT))
    # A worker claims three messages and is killed before it writes anything.
    killed = _telemetry({**env, "TELEMETRY_RECEIVE_MAX": "3"}, "worker",
                        crash_at="worker.after_receive")
    assert killed.returncode == -9, killed.stderr

    once = _telemetry(env, "worker", "--once")
    assert once.returncode == 0, once.stderr
    lines = once.stdout.splitlines()
    assert re.fullmatch(r"drained: [12] file\(s\), 20 reading\(s\), [\d,]+ bytes", lines[0]), lines
    m = re.fullmatch(r"left: 0 visible, 3 in flight \(visible again by (\S+) at the latest; "
                     r"--once --wait drains them too\), 1 dead-lettered \(telemetry dlq list\)",
                     lines[1])
    assert m, lines
    by = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
    assert now - timedelta(seconds=1) <= by <= datetime.now(UTC) + timedelta(seconds=VT)
    assert len(_stored(tmp_path / "lake")) == 20

    waited = _telemetry(env, "worker", "--once", "--wait")
    assert waited.returncode == 0, waited.stderr
    assert "waiting" in waited.stdout
    last = waited.stdout.splitlines()[-1]
    assert last == "left: 0 visible, 0 in flight, 1 dead-lettered (telemetry dlq list)", \
        waited.stdout
    assert _stored(tmp_path / "lake") == set(ids)
