"""What ingest needs of a queue: to send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class MessageSender(Protocol):
    """At-least-once queue with SQS semantics (contract section 4), as seen by a sender."""

    @property
    def max_message_bytes(self) -> int:
        """The largest body `send` accepts."""
        ...

    def send(self, bodies: Sequence[bytes]) -> None:
        """Durably enqueue every body, or raise QueueUnavailable.

        On QueueUnavailable some bodies may have been enqueued (at-least-once); callers retry
        the whole call and rely on idempotent reading ids.
        """
        ...
