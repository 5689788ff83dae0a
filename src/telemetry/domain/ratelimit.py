"""Per-API-key token buckets: the ingest rate limit, as arithmetic on a time the caller passes in.

Pure on purpose: no clock read, no lock. The HTTP app calls it from the event loop thread only,
so there is no concurrent access to guard against, and tests drive time by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second flow in, up to `burst`; a request takes `cost` tokens."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens if there are enough and return 0.0; else take none and return
        the seconds until there will be enough (what `Retry-After` should say)."""
        # A clock that went back (or a caller mixing clocks) must not mint tokens.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key id, created full on first use.

    Buckets are kept per authenticated key id only, so their number is bounded by the key
    store; an unauthenticated flood never reaches this.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key_id: str, now: float, cost: float = 1.0) -> float:
        """0.0 when the request may go ahead, else the seconds to wait before retrying."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)


if TYPE_CHECKING:  # conformance, checked by mypy
    from telemetry.domain.ports.rate_limits import RateLimits

    def _conforms(x: RateLimiter) -> RateLimits:
        return x
