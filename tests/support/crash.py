"""Crash points for the crash tests: SIGKILL a pipeline process at a named point.

    python -m tests.support.launch --crash-at <point>[:<nth>] -- <telemetry arguments>

builds the container as `telemetry` does, wraps its queue and storage (`install`) and runs the
command: the process kills itself the nth time (default 1) it passes `<point>`. The product
reads no test variable and holds no hook; the only seams are the container's providers (the
queue, the storage, and the `step` that `CurateHours` takes) and `FilesystemStorage`'s
`_write_chunk` and `_publish`.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dependency_injector import providers

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain.ports.consuming import Message
from telemetry.domain.ports.storage import Storage
from tests.support.roles import Queue

if TYPE_CHECKING:
    from telemetry.entrypoints.container import Container

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def parse_crash_at(text: str) -> CrashAt:
    """`<point>[:<nth>]`; ValueError naming the point or the count when it is not one."""
    point, _, nth = text.strip().partition(":")
    if point not in POINTS:
        known = ", ".join(sorted(POINTS))
        raise ValueError(f"crash point {text!r}: unknown point; one of {known}")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"crash point {text!r}: nth must be a whole number from 1")
    return CrashAt(point, n)


def install(container: Container, crash: CrashAt) -> None:
    """The container's queue and storage wrapped in kill points.

    The adapters are built here, eagerly: an override that wrapped the provider it replaces
    would call itself."""
    queue = container.queue()
    storage = container.storage()
    if isinstance(storage, FilesystemStorage):
        storage = KillableFilesystemStorage(storage.root, crash)
    container.queue.override(providers.Object(CrashingQueue(queue, crash)))
    container.storage.override(providers.Object(CrashingStorage(storage, crash)))
    # Curation passes points of its own (`CurateHours(step=...)`).
    container.curate_hours.add_kwargs(step=crash.step)


# `python -m tests.support.launch` imports `tests` from the working directory: run it from here.
REPO = Path(__file__).resolve().parents[2]


def command(point: str) -> list[str]:
    """The start of a command line running `telemetry` with `point` armed (cwd: REPO)."""
    return [sys.executable, "-m", "tests.support.launch", "--crash-at", point, "--"]
