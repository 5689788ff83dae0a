"""In-memory adapters with the real ones' semantics, for tests and single-process runs.

They keep their state in plain attributes so tests assert on state, not on calls.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from telemetry.adapters.clock import SystemClock
from telemetry.domain.errors import NotFound, QueueUnavailable
from telemetry.domain.ports.api_keys import StoredApiKey
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.consuming import Message
from telemetry.domain.ports.depth import QueueDepth


@dataclass(slots=True)
class _Entry:
    message_id: str
    body: bytes
    visible_at: float = 0.0
    receive_count: int = 0
    receipt: str = ""
    sent_at: float = 0.0


class MemoryQueue:
    """SQS semantics in a dict: visibility timeout, receive count, dead-letter after max
    receives."""

    def __init__(
        self,
        *,
        visibility_timeout: float = 30.0,
        max_receives: int = 5,
        max_message_bytes: int = 1024 * 1024,
        clock: Clock | None = None,
    ) -> None:
        self.visibility_timeout = visibility_timeout
        self.max_receives = max_receives
        self._max_message_bytes = max_message_bytes
        self._clock = clock or SystemClock()
        self._lock = threading.Condition()
        self._seq = itertools.count(1)
        self.messages: dict[str, _Entry] = {}
        self.dead: dict[str, _Entry] = {}
        self.available = True  # tests flip this to simulate an outage

    @property
    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    def _guard(self) -> None:
        if not self.available:
            raise QueueUnavailable("memory queue switched off")

    def send(self, bodies: Sequence[bytes]) -> None:
        self._guard()
        for b in bodies:
            if len(b) > self._max_message_bytes:
                raise ValueError(f"message of {len(b)} bytes over {self._max_message_bytes}")
        with self._lock:
            for b in bodies:
                mid = f"m{next(self._seq)}"
                self.messages[mid] = _Entry(mid, bytes(b), sent_at=self._clock.now().timestamp())
            self._lock.notify_all()

    def receive(self, max_messages: int, wait_seconds: float = 0.0) -> list[Message]:
        self._guard()
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            while True:
                out = self._take(max_messages)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._lock.wait(min(remaining, 0.05))

    def _take(self, max_messages: int) -> list[Message]:
        now = self._clock.now().timestamp()
        out: list[Message] = []
        for mid in list(self.messages):
            if len(out) >= max_messages:
                break
            e = self.messages[mid]
            if e.visible_at > now:
                continue
            if e.receive_count >= self.max_receives:
                self.dead[mid] = self.messages.pop(mid)
                continue
            e.receive_count += 1
            e.visible_at = now + self.visibility_timeout
            e.receipt = f"{mid}:{uuid.uuid4().hex}"
            out.append(Message(mid, e.body, e.receipt, e.receive_count))
        return out

    def _by_receipt(self, receipt: str) -> _Entry | None:
        mid = receipt.split(":", 1)[0]
        e = self.messages.get(mid)
        return e if e is not None and e.receipt == receipt else None

    def delete(self, receipts: Sequence[str]) -> None:
        self._guard()
        with self._lock:
            for r in receipts:
                e = self._by_receipt(r)
                if e is not None:
                    del self.messages[e.message_id]

    def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        self._guard()
        with self._lock:
            now = self._clock.now().timestamp()
            for r in receipts:
                e = self._by_receipt(r)
                if e is not None:
                    e.visible_at = now + timeout_seconds

    def dead_letters(self, max_messages: int) -> list[Message]:
        with self._lock:
            return [
                Message(e.message_id, e.body, "", e.receive_count)
                for e in list(self.dead.values())[:max_messages]
            ]

    def redrive(self) -> int:
        with self._lock:
            n = len(self.dead)
            for mid, e in self.dead.items():
                self.messages[mid] = _Entry(mid, e.body, sent_at=e.sent_at)
            self.dead.clear()
            self._lock.notify_all()
            return n

    def check(self) -> None:
        self._guard()

    def depth(self) -> QueueDepth:
        self._guard()
        with self._lock:
            now = self._clock.now().timestamp()
            visible = sum(1 for e in self.messages.values() if e.visible_at <= now)
            oldest = min((e.sent_at for e in self.messages.values()), default=now)
            waiting = [e.visible_at for e in self.messages.values() if e.visible_at > now]
            by = datetime.fromtimestamp(max(waiting), UTC) if waiting else None
            return QueueDepth(visible, len(self.messages) - visible, len(self.dead),
                              max(0.0, now - oldest), by)


class MemoryStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(key) from None

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)

    def check(self) -> None:
        return None


class MemoryApiKeyStore:
    def __init__(self, keys: Sequence[StoredApiKey] = ()) -> None:
        self.keys: dict[str, StoredApiKey] = {k.key_id: k for k in keys}

    def find(self, key_id: str) -> StoredApiKey | None:
        return self.keys.get(key_id)

    def add(self, key: StoredApiKey) -> None:
        if key.key_id in self.keys:
            raise ValueError(f"key id {key.key_id} exists")
        self.keys[key.key_id] = key

    def all(self) -> list[StoredApiKey]:
        return sorted(self.keys.values(), key=lambda k: (k.created_at, k.key_id))

    def revoke(self, name_or_id: str) -> int:
        n = 0
        for k in list(self.keys.values()):
            if not k.revoked and name_or_id in (k.name, k.key_id):
                self.keys[k.key_id] = replace(k, revoked=True)
                n += 1
        return n


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.api_keys import ApiKeyAdmin, ApiKeyLookup
    from telemetry.domain.ports.consuming import MessageConsumer
    from telemetry.domain.ports.dead_letters import DeadLetters
    from telemetry.domain.ports.depth import QueueDepthProbe
    from telemetry.domain.ports.health import HealthCheck
    from telemetry.domain.ports.sending import MessageSender
    from telemetry.domain.ports.storage import Storage

    def _conforms_queue(x: MemoryQueue) -> tuple[
        MessageSender, MessageConsumer, DeadLetters, HealthCheck, QueueDepthProbe
    ]:
        return (x, x, x, x, x)

    def _conforms_storage(x: MemoryStorage) -> tuple[Storage, HealthCheck]:
        return (x, x)

    def _conforms_keys(x: MemoryApiKeyStore) -> tuple[ApiKeyLookup, ApiKeyAdmin]:
        return (x, x)
