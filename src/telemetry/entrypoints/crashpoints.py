"""Crash points, for the crash tests only: SIGKILL this process at a named point.

    TELEMETRY_TEST_CRASH_AT=<point>[:<nth>]

kills the process the nth time (default 1) it passes `<point>`. Unset (always, outside tests),
nothing here is installed: the container hands out the plain adapters, and the filesystem
adapter's step hook stays a no-op.

SIGKILL, not an exception or `os._exit`: no `finally`, no flush, no atexit, no temp-file
cleanup, just as with the OOM killer or a power cut (minus the page cache).

Points:
- `ingest.after_enqueue`: the readings of a request are in the queue, its 202 is not sent.
- `worker.after_receive`: messages are claimed (invisible), nothing is written.
- `storage.mid_write`: after a chunk of a lake file's temp file is written, before its fsync.
- `storage.before_rename`: the temp file is whole and fsynced, not yet renamed into place.
- `worker.after_put_before_delete`: a raw file is stored, its messages are not deleted.
- `curate.after_part`: a curated part of an hour is stored, the rest of the hour is not.
- `curate.after_manifest`: an hour's new manifest is stored, the old parts are not deleted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain.ports.consuming import Message, MessageConsumer
from telemetry.domain.ports.dead_letters import DeadLetters
from telemetry.domain.ports.health import HealthCheck
from telemetry.domain.ports.sending import MessageSender
from telemetry.domain.ports.storage import Storage
from telemetry.entrypoints.settings import ConfigError

ENV = "TELEMETRY_TEST_CRASH_AT"
POINTS = frozenset(
    {
        "ingest.after_enqueue",
        "worker.after_receive",
        "storage.mid_write",
        "storage.before_rename",
        "worker.after_put_before_delete",
        "curate.after_part",
        "curate.after_manifest",
    }
)


class CrashAt:
    """Kills the process on the nth pass through `point`; every other point is ignored."""

    def __init__(self, point: str, nth: int = 1) -> None:
        self.point = point
        self.nth = nth
        self._hits = 0
        self._lock = threading.Lock()  # ingest passes its points from several threads

    def step(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self._hits += 1
            if self._hits < self.nth:
                return
        # The test reads this line to know the process died where it was meant to.
        sys.stderr.write(f"crashpoint {point}:{self.nth}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def from_env(environ: Mapping[str, str] | None = None) -> CrashAt | None:
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not text:
        return None
    point, _, nth = text.partition(":")
    if point not in POINTS:
        raise ConfigError(f"{ENV}={text!r}: unknown point; one of " + ", ".join(sorted(POINTS)))
    try:
        n = int(nth) if nth else 1
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{ENV}={text!r}: nth must be a whole number from 1")
    return CrashAt(point, n)


class Queue(MessageSender, MessageConsumer, DeadLetters, HealthCheck, Protocol):
    """Every role a queue adapter plays, for a wrapper that forwards them all."""


class KillableFilesystemStorage(FilesystemStorage):
    """The filesystem lake, with the points inside `put`: after a chunk is written, and
    before the temporary file is renamed over the object."""

    def __init__(self, root: str | Path, crash: CrashAt) -> None:
        super().__init__(root)
        self._crash = crash

    def _write_chunk(self, fd: int, chunk: memoryview) -> int:
        written = super()._write_chunk(fd, chunk)
        self._crash.step("storage.mid_write")
        return written

    def _publish(self, tmp: Path, target: Path) -> None:
        self._crash.step("storage.before_rename")
        super()._publish(tmp, target)


class CrashingQueue:
    """The queue, with the points around send and receive."""

    def __init__(self, inner: Queue, crash: CrashAt) -> None:
        self._inner = inner
        self._crash = crash

    def send(self, bodies: Sequence[bytes]) -> None:
        self._inner.send(bodies)
        self._crash.step("ingest.after_enqueue")

    def receive(self, max_messages: int, wait_seconds: float = 0.0) -> list[Message]:
        messages = self._inner.receive(max_messages, wait_seconds)
        if messages:
            self._crash.step("worker.after_receive")
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CrashingStorage:
    """The lake, with the point after a raw file is stored (DrainBatches deletes next)."""

    def __init__(self, inner: Storage, crash: CrashAt) -> None:
        self._inner = inner
        self._crash = crash

    def put(self, key: str, data: bytes) -> None:
        self._inner.put(key, data)
        if key.startswith("raw/"):
            self._crash.step("worker.after_put_before_delete")

    def step(self, point: str) -> None:
        """For use cases that pass points of their own (curation)."""
        self._crash.step(point)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
