"""What the worker and aggregation need of the lake's object storage."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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

