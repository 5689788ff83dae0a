"""The batching policy: when a batch of one hour is flushed.

A batch is flushed when it reaches max readings or max bytes, or when its first envelope is
max age old. There is one open batch per event-time hour, and at most `max_open_hours` of them:
adding a envelope for a new hour beyond that flushes the batch opened earliest first.
Pure: the caller passes monotonic time in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry.domain.packing import Envelope


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Defaults: a file of up to 20,000 readings or 8 MiB, at most 5 s old, 8 hours open.

    Worker memory is bounded by about max_bytes x max_open_hours (64 MiB at the defaults).
    """

    max_readings: int = 20_000
    max_bytes: int = 8 * 1024 * 1024
    max_age_seconds: float = 5.0
    max_open_hours: int = 8

    def __post_init__(self) -> None:
        if self.max_readings < 1 or self.max_bytes < 1 or self.max_open_hours < 1:
            raise ValueError("batch limits must be positive")
        if self.max_age_seconds < 0:
            raise ValueError("batch max age must not be negative")


@dataclass(slots=True)
class Batch:
    hour: int
    opened_at: float
    envelopes: list[Envelope] = field(default_factory=list)
    readings: int = 0
    nbytes: int = 0
    extended_at: float | None = None  # when its messages' visibility was last extended
    name: str | None = None  # the file's name, fixed at the first write attempt

    def add(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        self.readings += envelope.readings
        self.nbytes += len(envelope.payload)

    @property
    def receipts(self) -> list[str]:
        return [p.receipt for p in self.envelopes]


class Batcher:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._open: dict[int, Batch] = {}  # insertion order == opening order

    def add(self, envelope: Envelope, now: float) -> list[Batch]:
        """Add an envelope; return the batches that must be flushed now."""
        ready: list[Batch] = []
        batch = self._open.get(envelope.hour)
        if batch is None:
            if len(self._open) >= self.policy.max_open_hours:
                oldest = next(iter(self._open))
                ready.append(self._open.pop(oldest))
            batch = self._open[envelope.hour] = Batch(envelope.hour, now)
        batch.add(envelope)
        if batch.readings >= self.policy.max_readings or batch.nbytes >= self.policy.max_bytes:
            ready.append(self._open.pop(envelope.hour))
        return ready

    def due(self, now: float) -> list[Batch]:
        """Batches whose age reached max age."""
        limit = self.policy.max_age_seconds
        old = [h for h, b in self._open.items() if now - b.opened_at >= limit]
        return [self._open.pop(h) for h in old]

    def take(self, hour: int) -> list[Batch]:
        """The open batch of `hour`, if any, taken out to be flushed now."""
        batch = self._open.pop(hour, None)
        return [] if batch is None else [batch]

    def take_all(self) -> list[Batch]:
        """Every open batch, for shutdown."""
        out = list(self._open.values())
        self._open.clear()
        return out

    def next_deadline(self) -> float | None:
        """When the oldest open batch becomes due, or None when nothing is open."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self.policy.max_age_seconds

    @property
    def open_batches(self) -> list[Batch]:
        return list(self._open.values())

    @property
    def open_readings(self) -> int:
        return sum(b.readings for b in self._open.values())
