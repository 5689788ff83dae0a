"""What the dead-letter commands need of a queue."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from telemetry.domain.ports.consuming import Message


@runtime_checkable
class DeadLetters(Protocol):
    """The dead-letter queue behind a queue: a look, and a way back."""

    def dead_letters(self, max_messages: int) -> list[Message]:
        """A look at the dead-letter queue, without consuming it."""
        ...

    def redrive(self) -> int:
        """Move every dead-lettered message back to the queue; returns how many."""
        ...
