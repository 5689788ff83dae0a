"""SqliteQueue's group commit: concurrent sends of one process share a transaction."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.errors import QueueUnavailable
from tests.integration.test_sqlite_queue import drain_all


class CountingConnection:
    """The queue's connection, counting its commits; `fail` makes each COMMIT fail as a full
    disk would."""

    def __init__(self, conn: sqlite3.Connection, fail: bool = False) -> None:
        self._conn = conn
        self.fail = fail
        self.commits = 0
        self.synchronous: list[int] = []  # the setting each commit ran under

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self.commits += 1
            self.synchronous.append(self._conn.execute("PRAGMA synchronous").fetchone()[0])
            if self.fail:
                raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def start_group(q: SqliteQueue, n: int, errors: list[BaseException]) -> list[threading.Thread]:
    """n threads sending one message each, queued behind the connection lock the caller holds,
    so that they form one group."""

    def send(i: int) -> None:
        try:
            q.send([json.dumps({"member": i}).encode()])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(q._queued) < n:  # one of them leads, blocked on the lock; the rest wait for it
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return threads


def test_sends_from_many_threads_are_all_there_exactly_once(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    threads_n, sends = 12, 40
    expected: list[bytes] = []

    def send(t: int) -> None:
        for s in range(sends):
            q.send([json.dumps({"t": t, "s": s, "i": i, "pad": "x" * 3000}).encode()
                    for i in range(1 + (t + s) % 3)])

    for t in range(threads_n):
        for s in range(sends):
            expected += [json.dumps({"t": t, "s": s, "i": i, "pad": "x" * 3000}).encode()
                         for i in range(1 + (t + s) % 3)]
    threads = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = drain_all(q)
    assert Counter(got) == Counter(expected)
    assert len(set(got)) == len(got)
    q.close()


def test_sends_queued_behind_the_lock_share_one_commit(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    errors: list[BaseException] = []
    with q._lock:
        threads = start_group(q, 8, errors)
        assert q._connection is not None
        counting = CountingConnection(q._connection)
        q._connection = counting  # type: ignore[assignment]
    for t in threads:
        t.join(10)
    assert errors == []
    assert counting.commits == 1
    assert sorted(drain_all(q)) == sorted(json.dumps({"member": i}).encode() for i in range(8))
    q.close()


def test_a_failed_group_commit_raises_for_every_member_and_stores_none(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    q.send([b'"before"'])
    errors: list[BaseException] = []
    with q._lock:
        threads = start_group(q, 8, errors)
        assert q._connection is not None
        failing = CountingConnection(q._connection, fail=True)
        q._connection = failing  # type: ignore[assignment]
    for t in threads:
        t.join(10)
    assert failing.commits == 1
    assert len(errors) == 8
    assert all(isinstance(e, QueueUnavailable) and "disk is full" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 8  # each caller raises its own exception
    # Nothing of the group is stored, and the queue works again (on a fresh connection).
    q.send([b'"after"'])
    assert sorted(drain_all(q)) == [b'"after"', b'"before"']
    q.close()


def test_a_send_that_fails_before_taking_its_group_fails_every_waiting_member(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    q = SqliteQueue(path, busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    errors: list[BaseException] = []
    with q._lock:
        threads = start_group(q, 5, errors)
    for t in threads:
        t.join(10)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert len(errors) == 5
    assert all(isinstance(e, QueueUnavailable) for e in errors)
    q.send([b'"later"'])  # the lead was handed back
    assert drain_all(q) == [b'"later"']
    q.close()


def test_an_invalid_body_fails_only_its_own_send(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", max_message_bytes=10)
    with pytest.raises(ValueError, match="over 10"):
        q.send([b"0123456789a"])
    with pytest.raises(TypeError):
        q.send([object()])  # type: ignore[list-item]
    q.send([b'"ok"'])
    assert drain_all(q) == [b'"ok"']
    q.close()


def test_sends_commit_with_full_sync_whatever_ran_before(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite3", visibility_timeout=600)
    q.check()
    assert q._connection is not None
    recording = CountingConnection(q._connection)
    q._connection = recording  # type: ignore[assignment]
    q.send([b'"a"', b'"b"'])
    got = q.receive(1)
    q.change_visibility([m.receipt for m in got], 900)
    q.delete([m.receipt for m in got])
    q.send([b'"c"'])
    q.redrive()
    full, normal = 2, 1
    assert recording.synchronous == [full, normal, normal, normal, full, full]
    q.close()
