"""The SQLite queue file under SIGKILL: senders (several threads each, so group commits happen)
and a consumer, all killed at random moments, several times. After every kill the file passes
`PRAGMA integrity_check`, and every body whose `send` returned is still in the queue or was
received by the consumer before it deleted it. Only the queue's public behaviour is used.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telemetry.adapters.sqlite_queue import SqliteQueue
from tests.e2e.test_crash_worker import assert_queue_intact, crash_seed

pytestmark = pytest.mark.e2e

VISIBILITY = 0.5
ROUNDS = 3

# Each line is written after the send returned (senders) or before the delete (consumer).
_CHILD = """
import sys, threading
from telemetry.adapters.sqlite_queue import SqliteQueue

role, path, tag, vis = sys.argv[1:5]
q = SqliteQueue(path, visibility_timeout=float(vis), max_receives=1000, max_message_bytes=1 << 20)
out = threading.Lock()

def say(lines):
    with out:
        sys.stdout.write("".join(x + "\\n" for x in lines))
        sys.stdout.flush()

def send(t):
    n = 0
    while True:
        bodies = [f"{tag}.{t}.{n}.{j}" for j in range(3)]
        q.send([b.encode() for b in bodies])
        say(bodies)
        n += 1

if role == "send":
    for t in range(4):
        threading.Thread(target=send, args=(t,), daemon=True).start()
    threading.Event().wait()
else:
    while True:
        ms = q.receive(10, 0.05)
        say([m.body.decode() for m in ms])
        q.delete([m.receipt for m in ms])
"""


def _lines(path: Path) -> set[str]:
    text = path.read_text() if path.exists() else ""
    return set(text.splitlines()[:-1] if not text.endswith("\n") else text.splitlines())


def test_queue_file_survives_kills_of_senders_and_consumers(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    seed = crash_seed()
    rng = random.Random(seed)
    logs: list[tuple[str, Path]] = []
    for r in range(ROUNDS):
        procs = []
        for role, tag in (("send", f"a{r}"), ("send", f"b{r}"), ("consume", f"c{r}")):
            log = tmp_path / f"{tag}.out"
            logs.append((role, log))
            with log.open("wb") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", _CHILD, role, str(db), tag, str(VISIBILITY)], stdout=f
                ))
        time.sleep(0.3)  # imports done, sends under way (some may be; the kills are random)
        t0 = time.monotonic()
        for at, proc in sorted(((rng.uniform(0.1, 0.8), x) for x in procs), key=lambda a: a[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            proc.kill()
        for proc in procs:
            assert proc.wait(timeout=10) == -9
        assert_queue_intact(db)

    acked = set().union(*(_lines(p) for role, p in logs if role == "send"))
    consumed = set().union(*(_lines(p) for role, p in logs if role == "consume"))
    # The kills hit a queue at work: sends acknowledged, and messages consumed.
    assert acked and consumed, "nothing was sent or consumed before the kills"
    time.sleep(VISIBILITY + 0.1)  # claims of the killed consumers expire
    left: set[str] = set()
    with SqliteQueue(db, visibility_timeout=30, max_receives=1000) as q:
        while ms := q.receive(10):
            left.update(m.body.decode() for m in ms)
        assert q.dead_letters(1) == []
    assert acked - consumed - left == set(), f"CRASH_SEED={seed}: sent, acknowledged, then lost"
