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


@runtime_checkable
class MappedStorage(Protocol):
    """Storage that can lend an object's bytes without copying them (a file mapped into
    memory). Aggregation scans whole raw files this way where the storage offers it."""

    def view(self, key: str) -> memoryview:
        """The object's bytes, read-only, as `get` would return them; NotFound as `get`.
        Valid while the view is held, also after the object is deleted or replaced."""
        ...

