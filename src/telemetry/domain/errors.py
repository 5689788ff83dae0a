"""Domain errors. Adapters translate technology errors into these, so services never see them."""

from __future__ import annotations

from dataclasses import dataclass


class TelemetryError(Exception):
    """Base of every error the domain raises or expects from a port."""


class QueueUnavailable(TelemetryError):
    """The queue did not take or give messages (down, locked, throttled, timed out)."""


class StorageUnavailable(TelemetryError):
    """The lake could not be written or read (disk full, permission, S3 error)."""


class NotFound(TelemetryError):
    """A key that was asked for is not in storage."""


class CorruptRawFile(TelemetryError, ValueError):
    """A raw lake file that is not lines of records; the message names it and says why."""


class PoisonMessage(TelemetryError):
    """A queue message that cannot be decoded: it is left to dead-letter."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: which reading (index in the request), which field, what is wrong."""

    index: int
    field: str
    message: str


class InvalidReadings(TelemetryError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} invalid reading(s)")
        self.problems = problems


class Forbidden(TelemetryError):
    """The key is valid but may not send for these vehicles."""

    def __init__(self, vehicle_ids: list[str]) -> None:
        super().__init__("not allowed for vehicle(s): " + ", ".join(vehicle_ids))
        self.vehicle_ids = vehicle_ids
