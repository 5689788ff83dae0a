"""Adapters under contract, one registry per port.

Each registry maps a name to a factory: a context manager that builds a fresh, empty adapter
and tears it down. Every test of a suite runs once per entry, so a new adapter joins a suite by
adding an entry here, nothing else. A cloud adapter's factory typically enters `mock_aws` (or
points at the shared moto server, see `tests.support.moto`) and creates a uniquely named
queue or bucket.

Queues need time to pass (visibility timeouts). The in-memory and SQLite queues take a time
source, so `advance` moves a FakeClock and costs nothing. SQS's time is moto's, which
`tests.support.moto` shifts on demand: `advance` costs nothing there either, but moto's clock
is the real one plus that shift, so it also runs between calls (`clock_runs`). A queue whose
time can only pass for real would sleep in `advance` (`sleep_advance`): its factory should
pick a short visibility timeout (say 1 s; the suites express every wait as a multiple of
`queue.visibility_timeout`) and set `fake_clock=False` (the stateful suite then skips it).
Every factory names in `quirks` what its adapter does differently from the port.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.memory import MemoryApiKeyStore, MemoryQueue, MemoryStorage
from telemetry.adapters.shared_ratelimit import SharedRateLimiter
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.ports.rate_limits import RateLimits
from telemetry.domain.ports.storage import Storage
from telemetry.domain.ratelimit import RateLimiter
from tests.support.fakes import FakeClock
from tests.support.roles import ApiKeyStore, Queue

# ------------------------------------------------------------------ queue

# Known departures from the port, which a harness may declare in `quirks`; the tests that
# exercise them skip that adapter and say why, or (the stateful suite) allow for them.
# AWS: a delete with an old receipt "succeeds, but the message might not be deleted"; moto
# deletes it. moto also honours an old receipt in change_visibility.
STALE_RECEIPT_DELETES = "stale_receipt_deletes"  # delete() may honour an old receipt
STALE_RECEIPT_VISIBILITY = "stale_receipt_visibility"  # so may change_visibility()


@dataclass(frozen=True)
class QueueSpec:
    """What a test asks of a fresh queue. A backend that cannot honour a value exactly (SQS:
    whole seconds, its own size limit) may round it: tests read the values back from the queue
    (`queue.visibility_timeout`, `queue.max_message_bytes`) and the harness (`max_receives`)."""

    tmp_path: Path
    visibility_timeout: float = 30.0
    max_receives: int = 3
    max_message_bytes: int = 256 * 1024


@dataclass
class QueueHarness:
    queue: Queue
    advance: Callable[[float], None]  # let this many seconds pass for the queue
    max_receives: int
    fake_clock: bool  # advance costs nothing; the stateful suite runs only these
    receive_wait: float = 0.0  # what a test waits in receive when it expects messages
    # The queue's clock also moves with real time, between calls: a timeout may run out early
    # by the real time since it was set, so a test of exact ties counts in much longer steps.
    clock_runs: bool = False
    quirks: frozenset[str] = field(default_factory=frozenset)


QueueFactory = Callable[[QueueSpec], AbstractContextManager[QueueHarness]]


@contextlib.contextmanager
def _memory_queue(spec: QueueSpec) -> Iterator[QueueHarness]:
    clock = FakeClock()
    q = MemoryQueue(
        visibility_timeout=spec.visibility_timeout,
        max_receives=spec.max_receives,
        max_message_bytes=spec.max_message_bytes,
        clock=clock,
    )
    yield QueueHarness(q, clock.advance, spec.max_receives, fake_clock=True)


@contextlib.contextmanager
def _sqlite_queue(spec: QueueSpec) -> Iterator[QueueHarness]:
    clock = FakeClock()
    q = SqliteQueue(
        spec.tmp_path / "queue" / "queue.sqlite3",
        visibility_timeout=spec.visibility_timeout,
        max_receives=spec.max_receives,
        max_message_bytes=spec.max_message_bytes,
        clock=clock,
    )
    try:
        yield QueueHarness(q, clock.advance, spec.max_receives, fake_clock=True)
    finally:
        q.close()


@contextlib.contextmanager
def _sqs_queue(aws: str, spec: QueueSpec) -> Iterator[QueueHarness]:
    """An SQS queue (and its dead-letter queue) as `telemetry aws init` makes them, in moto:
    `aws` is "mock_aws" (in process) or "moto_server" (over HTTP via AWS_ENDPOINT_URL)."""
    from tests.support.moto import aws_target

    # SQS counts whole seconds. moto's SQS clock is virtual here (tests.support.moto), so
    # `advance` costs nothing in process or in the server, and timeouts need not be short.
    timeout = math.ceil(spec.visibility_timeout)
    # SQS's MaximumMessageSize is 1 KiB..1 MiB; the adapter packs to 3/4 of it.
    size = min(max(spec.max_message_bytes, 1024), 1024 * 1024)
    with aws_target(aws) as target:
        q = target.queue(
            visibility_timeout=timeout,
            max_receives=spec.max_receives,
            message_size=size,
            moto_safe=True,  # moto races concurrent receives; SQS does not
            dead_letter_wait_seconds=0,  # moto never answers a short poll falsely empty
        )
        yield QueueHarness(
            q,
            target.advance,
            spec.max_receives,
            fake_clock=True,  # moto's SQS clock is shifted, not waited for
            clock_runs=True,  # ... from the real one, which keeps running
            quirks=frozenset({STALE_RECEIPT_DELETES, STALE_RECEIPT_VISIBILITY}),
        )


QUEUE_ADAPTERS: dict[str, QueueFactory] = {
    "memory": _memory_queue,
    "sqlite": _sqlite_queue,
    "sqs-mock_aws": functools.partial(_sqs_queue, "mock_aws"),
    "sqs-moto_server": functools.partial(_sqs_queue, "moto_server"),
}


def sleep_advance(seconds: float) -> None:
    """`advance` for a backend on the real clock."""
    time.sleep(seconds)


@pytest.fixture(params=sorted(QUEUE_ADAPTERS))
def make_queue(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., QueueHarness]]:
    """Build fresh queues of one adapter: `make_queue(visibility_timeout=..., ...)`."""
    factory = QUEUE_ADAPTERS[request.param]
    with contextlib.ExitStack() as stack:
        made = 0

        def make(**overrides: Any) -> QueueHarness:
            nonlocal made
            made += 1
            spec = QueueSpec(tmp_path / f"q{made}", **overrides)
            return stack.enter_context(factory(spec))

        yield make


@pytest.fixture
def queue(make_queue: Callable[..., QueueHarness]) -> QueueHarness:
    return make_queue()


# ------------------------------------------------------------------ storage

StorageFactory = Callable[[Path], AbstractContextManager[Storage]]


@contextlib.contextmanager
def _memory_storage(tmp_path: Path) -> Iterator[Storage]:
    yield MemoryStorage()


@contextlib.contextmanager
def _filesystem_storage(tmp_path: Path) -> Iterator[Storage]:
    yield FilesystemStorage(tmp_path / "lake")


@contextlib.contextmanager
def _s3_storage(aws: str, tmp_path: Path) -> Iterator[Storage]:
    """A fresh bucket in moto, with a prefix, so keys are seen to come back without it."""
    from tests.support.moto import aws_target

    with aws_target(aws) as target:
        yield target.storage("fleet/lake")


STORAGE_ADAPTERS: dict[str, StorageFactory] = {
    "memory": _memory_storage,
    "filesystem": _filesystem_storage,
    "s3-mock_aws": functools.partial(_s3_storage, "mock_aws"),
    "s3-moto_server": functools.partial(_s3_storage, "moto_server"),
}


@pytest.fixture(params=sorted(STORAGE_ADAPTERS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    with STORAGE_ADAPTERS[request.param](tmp_path) as s:
        yield s


# ------------------------------------------------------------------ key store

KeyStoreFactory = Callable[[Path], AbstractContextManager[ApiKeyStore]]


@contextlib.contextmanager
def _memory_key_store(tmp_path: Path) -> Iterator[ApiKeyStore]:
    yield MemoryApiKeyStore()


@contextlib.contextmanager
def _file_key_store(tmp_path: Path) -> Iterator[ApiKeyStore]:
    yield FileApiKeyStore(tmp_path / "keys" / "keys.json")


KEYSTORE_ADAPTERS: dict[str, KeyStoreFactory] = {
    "memory": _memory_key_store,
    "file": _file_key_store,
}


@pytest.fixture(params=sorted(KEYSTORE_ADAPTERS))
def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiKeyStore]:
    with KEYSTORE_ADAPTERS[request.param](tmp_path) as k:
        yield k


# ------------------------------------------------------------------ rate limits

MakeLimits = Callable[[float, float], RateLimits]
"""(rate, burst) -> a fresh limiter of one adapter."""


def _memory_limits(tmp_path: Path) -> Iterator[MakeLimits]:
    yield RateLimiter


def _file_limits(tmp_path: Path) -> Iterator[MakeLimits]:
    made: list[SharedRateLimiter] = []
    names = itertools.count()

    def make(rate: float, burst: float) -> RateLimits:
        # a small table: the stalest-slot reuse is exercised by the suite's many keys too
        made.append(SharedRateLimiter(tmp_path / f"buckets-{next(names)}", rate, burst,
                                      slots=64))
        return made[-1]

    yield make
    for limiter in made:
        limiter.close()


RATE_LIMIT_ADAPTERS: dict[str, Callable[[Path], Iterator[MakeLimits]]] = {
    "memory": _memory_limits,
    "file": _file_limits,
}


@pytest.fixture(params=sorted(RATE_LIMIT_ADAPTERS))
def make_limits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLimits]:
    yield from RATE_LIMIT_ADAPTERS[request.param](tmp_path)
