"""What the worker needs of a queue: to receive, delete and keep messages invisible."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Message:
    """A received queue message. `receipt` identifies this receive, not the message."""

    message_id: str
    body: bytes
    receipt: str
    receive_count: int


@runtime_checkable
class MessageConsumer(Protocol):
    """At-least-once queue with SQS semantics (contract section 4), as seen by a consumer."""

    @property
    def visibility_timeout(self) -> float:
        """Seconds a received message stays invisible; the worker extends what it still holds."""
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
