"""SqliteQueue beyond the port suite: several processes on one file, crashes, error translation.

Child processes run small scripts (`python -c`) on the real clock, so they share nothing with
the test process but the file. What a SIGKILL can and cannot prove: it shows that a committed
send is in the file and that an interrupted transaction leaves no trace, but the page cache
survives a killed process, so it does not prove the fsync; `synchronous=FULL` is checked
directly instead.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.errors import QueueUnavailable
from tests.support.fakes import FakeClock


def child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def drain_all(q: SqliteQueue) -> list[bytes]:
    out: list[bytes] = []
    while got := q.receive(500):
        out.extend(m.body for m in got)
        q.delete([m.receipt for m in got])
    return out


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


# ------------------------------------------------------------------ several processes

CONSUMER = """
import json, os, sys, time
from telemetry.adapters.sqlite_queue import SqliteQueue
path, go = sys.argv[1], sys.argv[2]
q = SqliteQueue(path, visibility_timeout=600)
open(go + "." + sys.argv[3], "w").close()  # ready
while not os.path.exists(go):
    time.sleep(0.002)
got, empty = [], 0
# The cap makes at least three consumers take part, even on a machine so busy that one of
# them could otherwise drain the queue before the others are scheduled.
while empty < 3 and len(got) < 250:
    ms = q.receive(int(sys.argv[3]))
    empty = 0 if ms else empty + 1
    got += [[m.message_id, m.receive_count, m.body.decode()] for m in ms]
print(json.dumps(got))
"""


def test_processes_receiving_at_once_never_share_a_message_and_get_them_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path, visibility_timeout=600)
    sent = [json.dumps({"n": i}).encode() for i in range(600)]
    for start in range(0, len(sent), 150):
        q.send(sent[start : start + 150])
    go = tmp_path / "go"
    sizes = (3, 5, 7, 11)
    procs = [child(CONSUMER, str(path), str(go), str(n)) for n in sizes]
    deadline = time.monotonic() + 30
    while not all(Path(f"{go}.{n}").exists() for n in sizes):  # all at the starting line
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    everything = [m for r in results for m in r]
    ids = Counter(m[0] for m in everything)
    assert [i for i, n in ids.items() if n > 1] == []
    assert sorted(m[2].encode() for m in everything) == sorted(sent)
    assert {m[1] for m in everything} == {1}
    assert q.receive(10) == []  # all still invisible
    q.close()


SENDER_THEN_HANG = """
import sys, time
from telemetry.adapters.sqlite_queue import SqliteQueue
q = SqliteQueue(sys.argv[1])
q.send([b'{"n": %d}' % i for i in range(int(sys.argv[2]))])
print("sent", flush=True)
time.sleep(60)
"""


def test_a_send_that_returned_survives_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    p = child(SENDER_THEN_HANG, str(path), "500")
    assert p.stdout is not None
    assert p.stdout.readline() == "sent\n"
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert integrity(path) == "ok"
    q = SqliteQueue(path)
    assert sorted(drain_all(q)) == sorted(b'{"n": %d}' % i for i in range(500))
    q.close()


WRITER_LOOP = """
import hashlib, json, random, sys
from telemetry.adapters.sqlite_queue import SqliteQueue
path, run, per_send = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = SqliteQueue(path)
rnd = random.Random(run)
batch = 0
while True:
    bodies = []
    for i in range(per_send):
        pad = "x" * rnd.randrange(200, 4000)
        digest = hashlib.sha256(pad.encode()).hexdigest()
        bodies.append(json.dumps(
            {"run": run, "batch": batch, "i": i, "pad": pad, "sha": digest}).encode())
    q.send(bodies)
    print(batch, flush=True)
    batch += 1
"""


def test_a_writer_killed_mid_transaction_leaves_whole_sends_or_nothing(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "q.sqlite3"
    per_send = 150
    acknowledged: dict[str, int] = {}
    for run, delay in (("r0", 0.0), ("r1", 0.003), ("r2", 0.011), ("r3", 0.017)):
        p = child(WRITER_LOOP, str(path), run, str(per_send))
        assert p.stdout is not None
        last = -1
        while last < 3:  # several sends committed, the next one on its way
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            last = int(line)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        # Lines printed before the kill and not read yet are acknowledged sends too.
        rest = p.stdout.read().split()
        acknowledged[run] = max([last, *map(int, rest)])
        p.stdout.close()
        if p.stderr:
            p.stderr.close()
        assert integrity(path) == "ok"

    q = SqliteQueue(path, visibility_timeout=600)
    per_batch: Counter[tuple[str, int]] = Counter()
    for body in drain_all(q):
        m = json.loads(body)
        assert hashlib.sha256(m["pad"].encode()).hexdigest() == m["sha"]  # whole
        per_batch[m["run"], m["batch"]] += 1
    q.close()
    assert set(per_batch.values()) == {per_send}  # every send whole or absent
    for run, last in acknowledged.items():
        batches = sorted(b for r, b in per_batch if r == run)
        # every acknowledged send is there; at most the one in flight besides
        assert batches[: last + 1] == list(range(last + 1))
        assert len(batches) <= last + 2


# ------------------------------------------------------------------ threads and fork


def test_threads_share_one_instance(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    per_thread, senders = 300, 3
    expected = sorted(
        json.dumps({"t": t, "i": i}).encode() for t in range(senders) for i in range(per_thread)
    )
    received: list[bytes] = []
    lock = threading.Lock()
    done = threading.Event()

    def send(t: int) -> None:
        for start in range(0, per_thread, 10):
            q.send([json.dumps({"t": t, "i": i}).encode()
                    for i in range(start, start + 10)])

    def consume() -> None:
        while not done.is_set():
            got = q.receive(8, 0.05)
            q.delete([m.receipt for m in got])
            with lock:
                received.extend(m.body for m in got)
                if len(received) >= len(expected):
                    done.set()

    threads = [threading.Thread(target=send, args=(t,)) for t in range(senders)]
    threads += [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    assert done.wait(60)
    for t in threads:
        t.join(10)
    assert sorted(received) == expected
    q.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    q.send([b'"parent"'])
    # Another thread is inside the queue at the moment of the fork; it does not exist in the
    # child, so the lock it holds would stay held there.
    inside, leave = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with q._lock:
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    inside.wait(10)
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            leave.set()
            holder.join(10)
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.alarm(10)  # a deadlocked child fails the test instead of hanging it
            got = q.receive(10)
            q.send([b'"child"'])
            code = 0 if [m.body for m in got] == [b'"parent"'] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [m.body for m in q.receive(10)] == [b'"child"']  # the parent's connection still works
    q.close()


# ------------------------------------------------------------------ durability and state


def test_durability_settings(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path)
    q.check()
    conn = q._connection
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    q.close()


def test_state_survives_a_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "q.sqlite3"
    q1 = SqliteQueue(path, visibility_timeout=30, max_receives=2, clock=clock)
    q1.send([b'"a"', b'"b"'])
    got = q1.receive(10)
    q1.delete([m.receipt for m in got if m.body == b'"b"'])
    q1.close()  # a worker dies holding "a"
    q2 = SqliteQueue(path, visibility_timeout=30, max_receives=2, clock=clock)
    assert q2.receive(10) == []
    clock.advance(31)
    [again] = q2.receive(10)
    assert (again.body, again.receive_count) == (b'"a"', 2)
    clock.advance(31)
    assert q2.receive(10) == []
    q2.close()
    q3 = SqliteQueue(path, clock=clock)
    assert [m.body for m in q3.dead_letters(10)] == [b'"a"']
    q3.close()


def test_a_redriven_message_keeps_its_id_and_collides_with_no_newer_one(tmp_path: Path) -> None:
    clock = FakeClock()
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=10, max_receives=1,
                    clock=clock)
    q.send([b'"old"'])
    [old] = q.receive(1)
    clock.advance(11)
    assert q.receive(1) == []  # "old" is dead, the table is empty
    q.send([b'"new"'])  # would reuse old's id with a plain rowid
    assert q.redrive() == 1
    clock.advance(1)
    got = {m.body: m.message_id for m in q.receive(10)}
    assert got[b'"old"'] == old.message_id
    assert got[b'"new"'] != old.message_id
    q.close()


def test_a_zero_visibility_timeout_hands_each_message_out_once_per_receive(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=0, max_receives=2,
                    clock=clock)
    q.send([b'"a"', b'"b"', b'"c"'])
    assert sorted(m.body for m in q.receive(10)) == [b'"a"', b'"b"', b'"c"']
    assert sorted(m.receive_count for m in q.receive(10)) == [2, 2, 2]
    q.send([b'"d"'])
    assert [m.body for m in q.receive(10)] == [b'"d"']  # the rest go to the dead letters
    assert len(q.dead_letters(10)) == 3
    q.close()


def test_the_file_and_its_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "q.sqlite3"
    SqliteQueue(path).close()
    assert path.is_file()


def test_a_large_send_is_quick(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    bodies = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * 200) for i in range(5_000)]
    start = time.perf_counter()
    q.send(bodies)
    got = q.receive(5_000)
    q.delete([m.receipt for m in got])
    assert len(got) == len(bodies)
    assert time.perf_counter() - start < 3.0  # typically about 0.3 s
    q.close()


# ------------------------------------------------------------------ errors


def test_a_directory_in_place_of_the_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    path.mkdir()
    with pytest.raises(QueueUnavailable, match=str(path)):
        SqliteQueue(path)


def test_a_file_in_place_of_the_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(QueueUnavailable, match="data"):
        SqliteQueue(tmp_path / "data" / "q.sqlite3")


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not a database, just some text long enough for a header" * 20)
    with pytest.raises(QueueUnavailable, match=str(path)):
        SqliteQueue(path)


def test_a_lock_held_too_long_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path, busy_timeout=0.2)
    q.send([b'"waiting"'])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    start = time.monotonic()
    with pytest.raises(QueueUnavailable, match=r"locked|busy"):
        q.send([b'"x"'])
    assert time.monotonic() - start < 2.0
    with pytest.raises(QueueUnavailable):
        q.receive(1)  # claiming needs the write lock; WAL lets the look before it through
    assert q.dead_letters(1) == []  # reads are not blocked at all
    blocker.execute("ROLLBACK")
    blocker.close()
    q.send([b'"x"'])
    assert sorted(m.body for m in q.receive(10)) == [b'"waiting"', b'"x"']
    q.close()


def test_check_fails_when_the_queue_cannot_be_queried(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path)
    q.check()
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE messages")
    with pytest.raises(QueueUnavailable, match=str(path)):
        q.check()
    q.close()


def test_a_closed_queue_is_unavailable(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3")
    q.close()
    q.close()  # twice is fine
    with pytest.raises(QueueUnavailable, match="closed"):
        q.send([b"{}"])
    with pytest.raises(QueueUnavailable):
        q.check()


def test_bodies_over_the_limit_raise_value_error(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", max_message_bytes=10)
    with pytest.raises(ValueError, match="over 10"):
        q.send([b"0123456789", b"0123456789a"])
    assert q.receive(10) == []
    q.close()


class _LowBindLimitQueue(SqliteQueue):
    """As on an SQLite built with the old default of 999 bound variables per statement."""

    def _open(self) -> sqlite3.Connection:
        conn = super()._open()
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn


def test_one_receive_of_more_messages_than_sqlite_binds_at_once(tmp_path: Path) -> None:
    """TELEMETRY_RECEIVE_MAX is not bounded, and SQLite builds bind 999 to 250,000 variables
    per statement: the claimed bodies are read in chunks."""
    q = _LowBindLimitQueue(tmp_path / "q.sqlite3", visibility_timeout=30)
    bodies = [b"m%d" % i for i in range(2_500)]
    q.send(bodies)
    got = q.receive(2_500)
    assert sorted(m.body for m in got) == sorted(bodies)
    q.delete([m.receipt for m in got])
    assert q.receive(10) == []
    q.close()
