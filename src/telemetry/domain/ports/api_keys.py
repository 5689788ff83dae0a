"""The API key store, as authentication and the `keys` commands see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """An API key as kept: never the key itself, only its id and a hash of its secret."""

    key_id: str
    name: str
    secret_hash: str
    vehicles: tuple[str, ...]
    created_at: datetime
    revoked: bool = False


@runtime_checkable
class ApiKeyLookup(Protocol):
    """What authentication needs of the API key store."""

    def find(self, key_id: str) -> StoredApiKey | None: ...


@runtime_checkable
class ApiKeyAdmin(Protocol):
    """What the `keys` commands need of the API key store."""

    def add(self, key: StoredApiKey) -> None: ...

    def all(self) -> list[StoredApiKey]: ...

    def revoke(self, name_or_id: str) -> int:
        """Revoke by name or key id; returns how many keys it revoked."""
        ...
