"""The ports: what the domain needs from the outside world, as small Protocols.

Each adapter translates its technology's errors into `telemetry.domain.errors`, so a service
only ever handles `QueueUnavailable`, `StorageUnavailable` and `NotFound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Message:
    """A received queue message. `receipt` identifies this receive, not the message."""

    message_id: str
    body: bytes
    receipt: str
    receive_count: int


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for ages and deadlines."""
        ...


@runtime_checkable
class Queue(Protocol):
    """At-least-once queue with SQS semantics (contract section 4)."""

    @property
    def max_message_bytes(self) -> int:
        """The largest body `send` accepts."""
        ...

    @property
    def visibility_timeout(self) -> float:
        """Seconds a received message stays invisible; the worker extends what it still holds."""
        ...

    def send(self, bodies: Sequence[bytes]) -> None:
        """Durably enqueue every body, or raise QueueUnavailable.

        On QueueUnavailable some bodies may have been enqueued (at-least-once); callers retry
        the whole call and rely on idempotent reading ids.
        """
        ...

    def receive(self, max_messages: int, wait_seconds: float = 0.0) -> list[Message]:
        """Up to `max_messages` visible messages, now invisible for the visibility timeout.

        A message whose receive count already reached the maximum goes to the dead-letter queue
        instead of being returned. Waits up to `wait_seconds` for the first message.
        """
        ...

    def delete(self, receipts: Sequence[str]) -> None:
        """Delete received messages. A stale receipt (the message was received again since) is
        ignored, as is an unknown one."""
        ...

    def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        """Keep received messages invisible for `timeout_seconds` from now."""
        ...

    def dead_letters(self, max_messages: int) -> list[Message]:
        """A look at the dead-letter queue, without consuming it."""
        ...

    def redrive(self) -> int:
        """Move every dead-lettered message back to the queue; returns how many."""
        ...

    def check(self) -> None:
        """Raise QueueUnavailable unless the queue answers."""
        ...


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How much waits in a queue, as the backend tells it; None where it cannot say."""

    visible: int
    in_flight: int
    dead_letters: int | None
    oldest_age_s: float | None  # SQS publishes it to CloudWatch only, so None there
    # When every message in flight now is visible again at the latest (its receiver may delete
    # it first, or extend its timeout); None when none is in flight.
    visible_again_by: datetime | None = None
    exact: bool = True  # False where the backend only approximates (SQS)


@runtime_checkable
class QueueDepthProbe(Protocol):
    """What metrics and `telemetry triggers` read of a queue."""

    def depth(self) -> QueueDepth:
        """Raise QueueUnavailable unless the queue answers."""
        ...


@runtime_checkable
class Storage(Protocol):
    """Object storage for the lake: whole-object writes, listing by prefix."""

    def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically: readers see the whole object or none."""
        ...

    def get(self, key: str) -> bytes:
        """Raise NotFound if there is no such key."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; a key that is not there is no error."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the storage answers."""
        ...


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as kept: never the key itself, only its id and a hash of its secret."""

    key_id: str
    name: str
    secret_hash: str
    vehicles: tuple[str, ...]
    created_at: datetime
    revoked: bool = False


@runtime_checkable
class KeyStore(Protocol):
    def find(self, key_id: str) -> StoredKey | None: ...

    def add(self, key: StoredKey) -> None: ...

    def all(self) -> list[StoredKey]: ...

    def revoke(self, name_or_id: str) -> int:
        """Revoke by name or key id; returns how many keys it revoked."""
        ...
