"""SqliteQueue's two-table layout: migration of the old one-table file, and what a process
killed in the middle of sends and claims leaves behind (the same file, consistent)."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.errors import QueueUnavailable
from tests.support.fakes import FakeClock

# The layout every file had before user_version 2, as the adapter then created it.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    body          BLOB    NOT NULL,
    sent_at       REAL    NOT NULL,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible_at ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY,
    body          BLOB    NOT NULL,
    sent_at       REAL    NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at       REAL    NOT NULL
);
"""
OLD_SEND = "INSERT INTO messages (body, sent_at, visible_at) VALUES (?, ?, ?)"


def old_layout_file(path: Path, now: float) -> None:
    """Five messages sent through the old layout: "a" and "b" waiting, "c" claimed until
    now + 30 (receipt "3:1:old"), "d" deleted (its id must not come back), "e" dead."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    for name in "abcde":
        db.execute(OLD_SEND, (json.dumps(name).encode(), now, now))
    db.execute("UPDATE messages SET receive_count = 1, visible_at = ?, receipt = '3:1:old' "
               "WHERE id = 3", (now + 30,))
    db.execute("DELETE FROM messages WHERE id = 4")
    db.execute("INSERT INTO dead_letters (id, body, sent_at, receive_count, dead_at) "
               "SELECT id, body, sent_at, 5, ? FROM messages WHERE id = 5", (now,))
    db.execute("DELETE FROM messages WHERE id = 5")
    db.close()


def layout(path: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return version, tables


def consistency(path: Path) -> tuple[set[int], set[int]]:
    """Checks the file; returns the ids in the queue and the dead ones."""
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        live = {r[0] for r in db.execute("SELECT id FROM messages")}
        dead = {r[0] for r in db.execute("SELECT id FROM dead_letters")}
        bodies = {r[0] for r in db.execute("SELECT id FROM bodies")}
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    assert live.isdisjoint(dead)  # a message is in the queue or dead, not both
    assert bodies == live | dead  # every state row has its body, and no body is orphaned
    assert max(bodies, default=0) <= (seq[0] if seq else 0)
    return live, dead


def test_an_old_layout_file_is_migrated_in_place_on_open(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "q.sqlite3"
    old_layout_file(path, clock.time())
    assert layout(path)[0] == 0

    q = SqliteQueue(path, visibility_timeout=30, max_receives=5, clock=clock)
    assert layout(path) == (2, {"messages", "bodies", "dead_letters", "sqlite_sequence"})
    assert consistency(path) == ({1, 2, 3}, {5})
    got = q.receive(10)
    assert [(m.message_id, m.body, m.receive_count) for m in got] == [
        ("1", b'"a"', 1), ("2", b'"b"', 1)]
    assert [(m.message_id, m.body) for m in q.dead_letters(10)] == [("5", b'"e"')]
    q.delete(["3:1:old"])  # a receipt handed out before the migration still deletes
    clock.advance(31)
    assert sorted(m.body for m in q.receive(10)) == [b'"a"', b'"b"']
    q.send([b'"f"'])  # the id sequence carried over: neither 4 (deleted) nor 5 (dead)
    assert q.redrive() == 1
    clock.advance(1)
    fresh = {m.body: m.message_id for m in q.receive(10)}
    assert fresh == {b'"e"': "5", b'"f"': "6"}
    q.close()
    assert consistency(path) == ({1, 2, 5, 6}, set())


def test_a_failed_migration_leaves_the_old_layout_untouched(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "q.sqlite3"
    old_layout_file(path, clock.time())
    with sqlite3.connect(path) as db:  # in the way of the migration, half-way through it
        db.execute("CREATE VIEW messages_2 AS SELECT 1")
    with pytest.raises(QueueUnavailable, match="messages_2"):
        SqliteQueue(path, clock=clock)
    assert layout(path) == (0, {"messages", "dead_letters", "sqlite_sequence"})
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
        db.execute("DROP VIEW messages_2")
    q = SqliteQueue(path, clock=clock)  # and the next open migrates
    assert sorted(m.body for m in q.receive(10)) == [b'"a"', b'"b"']
    q.close()


def test_a_file_from_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    SqliteQueue(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 3")
    with pytest.raises(QueueUnavailable, match="newer"):
        SqliteQueue(path)


def test_claims_and_deletes_never_rewrite_a_body(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path, visibility_timeout=600)
    q.send([b"x" * 200_000] * 4)
    wal = Path(f"{path}-wal")
    before = wal.stat().st_size
    got = q.receive(4)
    q.change_visibility([m.receipt for m in got], 700)
    q.delete([m.receipt for m in got])
    # Three small commits: a few pages each, far less than one body.
    assert wal.stat().st_size - before < 100_000
    assert consistency(path) == (set(), set())
    q.close()


# ------------------------------------------------------------------ a process killed


SEND_AND_CLAIM = """
import hashlib, json, random, sys, threading
from telemetry.adapters.sqlite_queue import SqliteQueue
path, run = sys.argv[1], sys.argv[2]
q = SqliteQueue(path, visibility_timeout=0, max_receives=2)
out = threading.Lock()

def say(*words):
    with out:
        print(*words, flush=True)

def send(t):
    rnd = random.Random(f"{run}{t}")
    for batch in range(10**9):
        bodies = []
        for i in range(rnd.randrange(1, 4)):
            pad = "x" * rnd.randrange(1000, 40000)
            key = f"{run}.{t}.{batch}.{i}"
            bodies.append(json.dumps(
                {"key": key, "pad": pad, "sha": hashlib.sha256(pad.encode()).hexdigest()}
            ).encode())
        q.send(bodies)
        say("sent", *(json.loads(b)["key"] for b in bodies))

def claim():
    while True:
        # visibility 0: what is not deleted comes straight back, and is dead after 2 receives
        got = q.receive(7)
        doomed = [m for m in got if int(m.message_id) % 2]
        say("deleting", *(json.loads(m.body)["key"] for m in doomed))
        q.delete([m.receipt for m in doomed])

say("ready")
for t in range(3):
    threading.Thread(target=send, args=(t,), daemon=True).start()
claim()
"""


def test_a_process_killed_amid_sends_and_claims_leaves_a_consistent_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    acknowledged: set[str] = set()
    maybe_deleted: set[str] = set()
    for run, delay in enumerate((0.05, 0.13, 0.29, 0.41, 0.6)):
        p = subprocess.Popen([sys.executable, "-c", SEND_AND_CLAIM, str(path), str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stderr is not None
        ready = p.stdout.readline()
        if ready != "ready\n":
            p.wait(10)
            pytest.fail(f"child: {ready!r} {p.stderr.read()}")
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        for line in p.stdout.read().splitlines():
            what, *keys = line.split()
            (acknowledged if what == "sent" else maybe_deleted).update(keys)
        p.stdout.close()
        p.stderr.close()
        consistency(path)

    live, dead = consistency(path)
    assert len(acknowledged) > 20, "the children did too little to show anything"
    assert maybe_deleted, "the children deleted nothing"
    q = SqliteQueue(path, visibility_timeout=600)
    assert q.redrive() == len(dead)
    found: Counter[str] = Counter()
    while got := q.receive(100):
        for m in got:
            doc = json.loads(m.body)
            assert hashlib.sha256(doc["pad"].encode()).hexdigest() == doc["sha"]  # whole
            found[doc["key"]] += 1
        q.delete([m.receipt for m in got])
    q.close()
    assert set(found.values()) <= {1}
    assert len(found) == len(live) + len(dead)
    # Every acknowledged send is in the file, unless a consumer deleted it.
    assert acknowledged - set(found) <= maybe_deleted
