"""What metrics, `worker --once` and `telemetry triggers` read of a queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


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
