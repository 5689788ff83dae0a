"""What readiness needs of a queue or a storage."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class HealthCheck(Protocol):
    def check(self) -> None:
        """Raise QueueUnavailable or StorageUnavailable unless the backend answers."""
        ...
