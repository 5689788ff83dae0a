"""The Queue port on one SQLite file: SQS semantics for a single machine, no service to run.

Shared by the ingest process and any number of workers (and by the threads of each):

- Layout: a message's body sits in `bodies`, written once by send and removed by delete; its
  mutable state (visible_at, receive_count, receipt) is a small row in `messages` (or in
  `dead_letters` once dead). Claims, visibility changes and dead-lettering rewrite only small
  rows, never a 31 KB body. The layout is versioned with `PRAGMA user_version`; a file in the
  older one-table layout is migrated in place, in one transaction, when it is opened.
- Durability of sends: WAL journal, and every send commits with `synchronous=FULL`, so the WAL
  is fsynced before `send` returns and the HTTP 202 that follows it is a promise kept across a
  crash or a power cut. A process killed mid-transaction leaves WAL frames without a commit
  record, which SQLite ignores on the next open: a send is there whole or not at all.
- Group commit: concurrent sends of one process (the ingest server's thread pool) share one
  transaction and one fsync. The first caller leads: once it holds the write lock it takes
  every send queued by then, commits them together and wakes their callers; each returns only
  after that commit, and if it fails every one of them gets QueueUnavailable. All bodies of a
  group are in one transaction, so each send stays all-or-nothing.
- Claims, deletes and visibility changes commit with `synchronous=NORMAL`: written to the WAL
  (so a killed process loses nothing) but not fsynced by themselves. WAL commits are ordered:
  the next fsync of the WAL, by any later send or by a checkpoint, makes them durable too, and
  recovery after a power cut replays a prefix of the commits, never a later one without an
  earlier one. So a power cut can undo only the last claims, deletes and visibility changes,
  never a send, and undoing them only makes messages visible again: a redelivery, which the
  port allows (at-least-once) and the lake tolerates (readings are deduped by identity when
  aggregated). A message whose claims were undone may be delivered more often than
  max_receives before it is dead-lettered; a dead-lettering undone puts the message back in
  the queue, to be dead-lettered again. Nothing sent is lost.
- Concurrency between processes: SQLite's file locks. Every write runs in `BEGIN IMMEDIATE`,
  which takes the write lock up front, so a receive selects and claims its messages in one
  atomic step and two consumers never hold the same message. Waiting for the lock is bounded by
  `busy_timeout`; past it the caller gets QueueUnavailable (and the client a 503).
- Concurrency between threads: one connection per process, guarded by a lock. SQLite runs one
  writer at a time anyway, so per-thread connections would buy only parallel reads, at the price
  of connections outliving their threads.
- fork: a connection must not cross a fork. The connection is tied to the pid that opened it;
  a forked child opens its own and leaves the inherited one untouched (closing it could disturb
  the parent's locks).
- WAL needs shared memory between the processes: the file must be on a local filesystem, not
  NFS or SMB.

Order: messages come out oldest-visible first (by the time they became visible, then by id),
so redelivered messages queue behind what was already waiting instead of starving it.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from telemetry.adapters.clock import SystemClock
from telemetry.adapters.private_files import make_private_dirs, open_private
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.consuming import Message
from telemetry.domain.ports.depth import QueueDepth

_POLL_FIRST = 0.01  # long-poll interval, doubling up to _POLL_MAX while the queue stays empty
_POLL_MAX = 0.1
_WAL_LIMIT_BYTES = 64 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint

# Layout 2 (`PRAGMA user_version`). Layout 1 (user_version 0) kept the body in `messages` and
# `dead_letters`, so every claim rewrote the body into the WAL; it is migrated on open.
#
# `bodies` is written once by send, read by receive and removed by delete (or kept while the
# message is dead-lettered): claims, visibility changes and deletes never rewrite a body.
# `messages` holds the mutable state of the messages in the queue, `dead_letters` that of the
# dead ones; a body has exactly one row in one of the two. `messages` keeps AUTOINCREMENT
# (sqlite_sequence), not a plain rowid: ids are never reused, so a dead-lettered message keeps
# its id on redrive without colliding with one sent since. `visible_at` is epoch seconds from
# the time source; a new message is visible from the moment it was sent. The index on
# visible_at also holds the rowid, so receive reads `visible_at <= now ORDER BY visible_at, id
# LIMIT n` straight off the index.
_LAYOUT = 2
# Claims, deletes and visibility changes commit without their own fsync: see the module
# docstring for why no guarantee rests on them.
_CLAIM_SYNCHRONOUS = "NORMAL"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible_at ON messages (visible_at);
CREATE TABLE IF NOT EXISTS bodies (
    id            INTEGER PRIMARY KEY,
    sent_at       REAL    NOT NULL,
    body          BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY,
    receive_count INTEGER NOT NULL,
    dead_at       REAL    NOT NULL
);
"""

# Layout 1 to 2, in the transaction that holds the write lock. The id sequence is carried over
# by hand: dropping the old table drops its sqlite_sequence row, and the largest id ever handed
# out may belong to a message deleted since.
_MIGRATE_1_TO_2 = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, body BLOB NOT NULL, sent_at REAL NOT NULL,
    receive_count INTEGER NOT NULL, dead_at REAL NOT NULL
);
CREATE TABLE bodies (
    id            INTEGER PRIMARY KEY,
    sent_at       REAL    NOT NULL,
    body          BLOB    NOT NULL
);
INSERT INTO bodies (id, sent_at, body) SELECT id, sent_at, body FROM messages;
INSERT OR IGNORE INTO bodies (id, sent_at, body) SELECT id, sent_at, body FROM dead_letters;
CREATE TABLE messages_2 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
INSERT INTO messages_2 (id, visible_at, receive_count, receipt)
    SELECT id, visible_at, receive_count, receipt FROM messages;
CREATE TABLE dead_letters_2 (
    id            INTEGER PRIMARY KEY,
    receive_count INTEGER NOT NULL,
    dead_at       REAL    NOT NULL
);
INSERT INTO dead_letters_2 (id, receive_count, dead_at)
    SELECT id, receive_count, dead_at FROM dead_letters WHERE id NOT IN (SELECT id FROM messages);
DROP TABLE messages;
DROP TABLE dead_letters;
ALTER TABLE messages_2 RENAME TO messages;
ALTER TABLE dead_letters_2 RENAME TO dead_letters;
CREATE INDEX messages_visible_at ON messages (visible_at);
DELETE FROM sqlite_sequence WHERE name IN ('messages', 'messages_2');
"""

_MIGRATE_SEQ = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0), "
    "coalesce((SELECT max(id) FROM messages), 0), coalesce((SELECT max(id) FROM dead_letters), 0))"
)
_MIGRATE_SET_SEQ = "INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)"

_SEND_STATE = "INSERT INTO messages (visible_at) VALUES (?)"
_SEND_BODY = "INSERT INTO bodies (id, sent_at, body) VALUES (?, ?, ?)"
_PROBE = "SELECT 1 FROM messages WHERE visible_at <= ? LIMIT 1"
_SELECT_VISIBLE = (
    "SELECT id, receive_count FROM messages WHERE visible_at <= ? ORDER BY visible_at, id LIMIT ?"
)
# The bodies of one claim in one statement: a statement per body cost as much as reading it.
# In chunks, below SQLite's limit on bound variables, whatever TELEMETRY_RECEIVE_MAX asks.
_BODIES = "SELECT id, body FROM bodies WHERE id IN ({})"
_BODIES_CHUNK = 500
_CLAIM = "UPDATE messages SET receive_count = ?, visible_at = ?, receipt = ? WHERE id = ?"
_TO_DEAD = (
    "INSERT OR REPLACE INTO dead_letters (id, receive_count, dead_at) "
    "SELECT id, receive_count, ? FROM messages WHERE id = ?"
)
_DELETE_ID = "DELETE FROM messages WHERE id = ?"
# The body goes first, while the state row still proves the receipt current.
_DELETE_BODY = (
    "DELETE FROM bodies WHERE id = ? "
    "AND EXISTS (SELECT 1 FROM messages WHERE id = ? AND receipt = ?)"
)
_DELETE = "DELETE FROM messages WHERE id = ? AND receipt = ?"
_CHANGE_VISIBILITY = "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?"
_PEEK_DEAD = (
    "SELECT d.id, b.body, d.receive_count FROM dead_letters AS d JOIN bodies AS b ON b.id = d.id "
    "ORDER BY d.id LIMIT ?"
)
_REDRIVE = (
    "INSERT INTO messages (id, visible_at, receive_count, receipt) "
    "SELECT id, ?, 0, NULL FROM dead_letters"
)
_CLEAR_DEAD = "DELETE FROM dead_letters"
_CHECK = "SELECT 1 FROM messages LIMIT 1"
_DEPTH = (
    "SELECT (SELECT count(*) FROM messages WHERE visible_at <= ?), "
    "(SELECT count(*) FROM messages WHERE visible_at > ?), "
    "(SELECT count(*) FROM dead_letters), "
    "(SELECT min(b.sent_at) FROM messages AS m JOIN bodies AS b ON b.id = m.id)"
)
_IS_LAYOUT_1 = "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'body'"


class _Send:
    """One caller's bodies waiting for a group commit."""

    __slots__ = ("bodies", "done", "error")

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.done = False
        self.error: BaseException | None = None


_OPEN_QUEUES: weakref.WeakSet[SqliteQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by another thread of the parent at the fork would never be released in the
    # child: every queue starts over with a fresh one (and, by the pid check, a fresh
    # connection). Sends queued by the parent's threads are the parent's to commit.
    for q in list(_OPEN_QUEUES):
        q._lock = threading.Lock()
        q._group = threading.Condition(threading.Lock())
        q._queued = []
        q._leading = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _parse_receipts(receipts: Sequence[str]) -> list[tuple[int, str]]:
    """(message id, receipt) pairs; receipts that are not ours cannot match and are dropped."""
    out: list[tuple[int, str]] = []
    for r in receipts:
        head, sep, _ = r.partition(":")
        if sep and head.isdigit():
            out.append((int(head), r))
    return out


class SqliteQueue:
    """A durable queue in one SQLite file, with the port's SQS semantics (contract section 4)."""

    def __init__(
        self,
        path: str | Path,
        *,
        visibility_timeout: float = 30.0,
        max_receives: int = 5,
        max_message_bytes: int = 1024 * 1024,
        clock: Clock | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        if visibility_timeout < 0:
            raise ValueError("visibility_timeout must be >= 0")
        if max_receives < 1:
            raise ValueError("max_receives must be >= 1")
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self.path = Path(path)
        self._visibility_timeout = float(visibility_timeout)
        self.max_receives = max_receives
        self._max_message_bytes = max_message_bytes
        self._clock = clock or SystemClock()
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        # Group commit of sends: callers queue in `_queued`; one of them at a time leads.
        self._group = threading.Condition(threading.Lock())
        self._queued: list[_Send] = []
        self._leading = False
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        self._synchronous = ""
        self._closed = False
        _OPEN_QUEUES.add(self)
        # Open now, so a path that cannot hold the queue stops the process at start.
        with self._transaction(None, "open"):
            pass

    # -------------------------------------------------------------- the port

    @property
    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    @property
    def visibility_timeout(self) -> float:
        return self._visibility_timeout

    def send(self, bodies: Sequence[bytes]) -> None:
        limit = self._max_message_bytes
        for b in bodies:
            if len(b) > limit:
                raise ValueError(f"message of {len(b)} bytes over {limit}")
        if not bodies:
            return
        me = _Send([bytes(b) for b in bodies])
        with self._group:
            self._queued.append(me)
            while self._leading and not me.done:
                self._group.wait()
            if not me.done:
                self._leading = True
        if not me.done:
            self._lead(me)
        if me.error is not None:
            raise me.error

    def receive(self, max_messages: int, wait_seconds: float = 0.0) -> list[Message]:
        if max_messages < 1:
            return []
        deadline = time.monotonic() + max(0.0, wait_seconds)
        interval = _POLL_FIRST
        while True:
            out = self._receive_once(max_messages)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            time.sleep(min(interval, remaining))
            interval = min(_POLL_MAX, interval * 2)

    def delete(self, receipts: Sequence[str]) -> None:
        pairs = _parse_receipts(receipts)
        if not pairs:
            return
        with self._transaction("IMMEDIATE", "delete", _CLAIM_SYNCHRONOUS) as db:
            db.executemany(_DELETE_BODY, ((i, i, r) for i, r in pairs))
            db.executemany(_DELETE, pairs)

    def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        pairs = _parse_receipts(receipts)
        if not pairs:
            return
        with self._transaction("IMMEDIATE", "change_visibility", _CLAIM_SYNCHRONOUS) as db:
            visible_at = self._clock.now().timestamp() + max(0.0, timeout_seconds)
            db.executemany(_CHANGE_VISIBILITY, ((visible_at, i, r) for i, r in pairs))

    def dead_letters(self, max_messages: int) -> list[Message]:
        if max_messages < 1:
            return []
        with self._transaction(None, "dead_letters") as db:
            rows = db.execute(_PEEK_DEAD, (max_messages,)).fetchall()
        return [Message(str(i), body, "", count) for i, body, count in rows]

    def redrive(self) -> int:
        with self._transaction("IMMEDIATE", "redrive") as db:
            moved = db.execute(_REDRIVE, (self._clock.now().timestamp(),)).rowcount
            db.execute(_CLEAR_DEAD)
        return moved

    def check(self) -> None:
        with self._transaction(None, "check") as db:
            db.execute(_CHECK).fetchall()

    # -------------------------------------------------------------- beyond the port

    def depth(self) -> QueueDepth:
        with self._transaction(None, "depth") as db:
            now = self._clock.now().timestamp()
            visible, in_flight, dead, oldest = db.execute(_DEPTH, (now, now)).fetchone()
            last = db.execute("SELECT max(visible_at) FROM messages WHERE visible_at > ?",
                              (now,)).fetchone()[0]
        age = None if oldest is None else max(0.0, now - oldest)
        by = datetime.fromtimestamp(last, UTC) if in_flight and last is not None else None
        return QueueDepth(visible, in_flight, dead, 0.0 if age is None else age, by)

    def close(self) -> None:
        """Close this process's connection; the queue raises QueueUnavailable afterwards."""
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- internals

    def _lead(self, me: _Send) -> None:
        """Commit, in one transaction, every send queued by the time the write lock is held
        (this caller's among them), then hand the lead to whoever queued since."""
        group: list[_Send] = []
        error: BaseException | None = None
        try:
            with self._transaction("IMMEDIATE", "send") as db:
                # Taken only now: the sends that queued while this one waited for the lock
                # (behind a receive, another process, the previous group's fsync) ride along.
                with self._group:
                    group, self._queued = self._queued, []
                now = self._clock.now().timestamp()
                for member in group:
                    for body in member.bodies:
                        cur = db.execute(_SEND_STATE, (now,))
                        db.execute(_SEND_BODY, (cur.lastrowid, now, body))
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._group:
                if not group:  # failed before taking them: the group is whoever queued
                    group, self._queued = self._queued, []
                for member in group:
                    member.done = True
                    if member is not me and error is not None:
                        # Each member raises its own exception; the leader re-raises the
                        # original.
                        why = error if isinstance(error, QueueUnavailable) else (
                            f"SQLite queue {self.path}: send: {error!r}")
                        member.error = QueueUnavailable(str(why))
                        member.error.__cause__ = error
                self._leading = False
                self._group.notify_all()

    def _receive_once(self, max_messages: int) -> list[Message]:
        # A read first: WAL readers do not block the writer, so idle consumers polling an
        # empty queue never queue up for the write lock behind the ingest's sends.
        with self._transaction(None, "receive") as db:
            # fetchall: a half-read cursor would hold its read snapshot open
            if not db.execute(_PROBE, (self._clock.now().timestamp(),)).fetchall():
                return []
        with self._transaction("IMMEDIATE", "receive", _CLAIM_SYNCHRONOUS) as db:
            return self._claim(db, max_messages)

    def _claim(self, db: sqlite3.Connection, max_messages: int) -> list[Message]:
        now = self._clock.now().timestamp()
        visible_at = now + self._visibility_timeout
        # A receipt names the message, its receive count and this call: unique per receive
        # (a redriven message counts from 0 again, the call token still differs).
        token = secrets.token_hex(8)
        out: list[Message] = []
        taken: set[int] = set()
        while len(out) < max_messages:
            need = max_messages - len(out)
            # With a visibility timeout of 0 what was just claimed is still visible; ask for
            # that many more rows and skip them.
            rows = db.execute(_SELECT_VISIBLE, (now, need + len(taken))).fetchall()
            fresh = [r for r in rows if r[0] not in taken]
            if not fresh:
                break
            dead = [(now, i) for i, count in fresh if count >= self.max_receives]
            live = [r for r in fresh if r[1] < self.max_receives][:need]
            if dead:
                # The body stays in `bodies`: dead-lettering moves only the small state row.
                db.executemany(_TO_DEAD, dead)
                db.executemany(_DELETE_ID, ((i,) for _, i in dead))
            claims = []
            ids = [i for i, _ in live]
            bodies: dict[int, bytes] = {}
            for k in range(0, len(ids), _BODIES_CHUNK):
                chunk = ids[k : k + _BODIES_CHUNK]
                bodies.update(db.execute(_BODIES.format(",".join("?" * len(chunk))), chunk))
            for i, count in live:
                receipt = f"{i}:{count + 1}:{token}"
                claims.append((count + 1, visible_at, receipt, i))
                out.append(Message(str(i), bodies[i], receipt, count + 1))
                taken.add(i)
            db.executemany(_CLAIM, claims)
            if not dead:
                break  # every row was live: either max_messages are out or nothing is left
        return out

    def _open(self) -> sqlite3.Connection:
        make_private_dirs(self.path.parent)
        # Made here mode 0600: SQLite gives the -wal and -shm files the database file's mode.
        os.close(open_private(self.path, os.O_RDWR))
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # transactions are begun explicitly
            check_same_thread=False,  # guarded by self._lock
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute("PRAGMA synchronous=FULL")
            # Debian and others build SQLite with secure_delete on, which zero-fills every page
            # a delete frees: each body would be written into the WAL a second time on delete.
            # FAST still clears what is freed inside b-tree pages, at no extra I/O.
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            # The write lock only when the layout is not current: a worker (re)connecting must
            # not wait behind a busy writer for a schema that is already there.
            if conn.execute("PRAGMA user_version").fetchone()[0] != _LAYOUT:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._create_or_migrate(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to the current layout, inside the caller's write transaction."""
        layout = conn.execute("PRAGMA user_version").fetchone()[0]  # another may have done it
        if layout == _LAYOUT:
            return
        if layout > _LAYOUT:
            raise sqlite3.DatabaseError(f"queue layout {layout} is newer than this code's")
        if conn.execute(_IS_LAYOUT_1).fetchone()[0]:
            seq = conn.execute(_MIGRATE_SEQ).fetchone()[0]
            for statement in filter(str.strip, _MIGRATE_1_TO_2.split(";")):
                conn.execute(statement)
            conn.execute(_MIGRATE_SET_SEQ, (seq,))
        else:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={_LAYOUT}")

    def _drop_connection(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None and self._pid == os.getpid():
            with suppress(sqlite3.Error):
                conn.close()

    @contextmanager
    def _transaction(
        self, mode: str | None, what: str, synchronous: str = "FULL"
    ) -> Iterator[sqlite3.Connection]:
        """The connection, in a transaction when `mode` is set, committed with `synchronous`;
        any failure becomes QueueUnavailable naming the file."""
        with self._lock:
            if self._closed:
                raise QueueUnavailable(f"SQLite queue {self.path}: closed")
            db: sqlite3.Connection | None = None
            try:
                if self._connection is None or self._pid != os.getpid():
                    self._connection = None  # a parent's connection is left alone
                    self._connection = self._open()
                    self._pid = os.getpid()
                    self._synchronous = "FULL"
                db = self._connection
                if mode is None:
                    yield db
                else:
                    if synchronous != self._synchronous:
                        db.execute(f"PRAGMA synchronous={synchronous}")
                        self._synchronous = synchronous
                    db.execute(f"BEGIN {mode}")
                    yield db
                    db.execute("COMMIT")
            except BaseException as exc:
                if db is not None and db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        self._drop_connection()
                if not isinstance(exc, sqlite3.Error | OSError):
                    raise
                if not _is_busy(exc):
                    # Reconnect on the next call: the file may have been replaced, or the
                    # connection left in a state a fresh one does not share.
                    self._drop_connection()
                raise QueueUnavailable(f"SQLite queue {self.path}: {what}: {exc}") from exc


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.consuming import MessageConsumer
    from telemetry.domain.ports.dead_letters import DeadLetters
    from telemetry.domain.ports.depth import QueueDepthProbe
    from telemetry.domain.ports.health import HealthCheck
    from telemetry.domain.ports.sending import MessageSender

    def _conforms(x: SqliteQueue) -> tuple[
        MessageSender, MessageConsumer, DeadLetters, HealthCheck, QueueDepthProbe
    ]:
        return (x, x, x, x, x)
