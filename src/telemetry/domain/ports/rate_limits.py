"""Per-key rate limits, as ingest consults them."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RateLimits(Protocol):
    def take(self, key_id: str, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens from the key's bucket at monotonic time `now`: 0.0 when the
        request may go ahead, else the seconds to wait before retrying (none are taken)."""
        ...
