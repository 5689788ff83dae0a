"""What `simulate` and `replay` share as clients of the ingest API: what they need of the
client, when a failed request means every further one would fail the same way, the checks of
their command lines, and their summary and exit status."""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from typing import Any, Protocol

from telemetry.adapters.ingest_client import ClientSummary
from telemetry.domain.readings import MAX_VEHICLE_ID, MIN_TS, VEHICLE_ID_PATTERN

_VEHICLE_RE = re.compile(VEHICLE_ID_PATTERN)
ERRORS_KEPT = 5
"""Failed requests whose error a run keeps for its summary: the rest are alike."""


class IngestSender(Protocol):
    """What simulate and replay need of `IngestClient` (tests pass a fake). `last_error`, when
    a client has it, is the error of its last request that sent nothing."""

    summary: ClientSummary

    def send(self, readings: list[dict[str, Any]]) -> list[str]: ...

    def close(self) -> None: ...


def refused(err: object) -> bool:
    """401 or 403: the key is wrong for every further request too."""
    return getattr(err, "status", None) in (401, 403)


def gave_up(err: object) -> bool:
    """The client spent its retries on a request (the server stayed unavailable)."""
    return getattr(err, "body", None) == "gave up"


def keep_error(errors: list[str], err: object) -> None:
    if len(errors) < ERRORS_KEPT:
        errors.append(str(err))


def stopped_after(err: object) -> str:
    """Why a run stopped early: what `stopped` says."""
    return f"stopped after a request failed: {err}"


def vehicle_id_ok(vehicle_id: str) -> bool:
    """A vehicle_id the service takes (the contract's pattern and length)."""
    return 1 <= len(vehicle_id) <= MAX_VEHICLE_ID and bool(_VEHICLE_RE.search(vehicle_id))


def start_time(value: str, expected: str = "an RFC 3339 timestamp") -> datetime:
    """An argparse type: an instant with its offset, not before 2000 (the service's rule)."""
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {expected}") from None
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r}: the timestamp needs an offset (Z, +02:00)")
    if ts < MIN_TS:
        raise argparse.ArgumentTypeError(f"{value!r}: readings must not be before 2000-01-01")
    return ts


def summary_line(s: ClientSummary, elapsed: float, extra: str = "") -> str:
    """The run's last line; `extra` ("name=value ") goes before the timing."""
    return (f"sent={s.sent} accepted={s.accepted} rejected={s.rejected} retries={s.retries} "
            f"{extra}elapsed_s={elapsed:.2f} rate={s.accepted / max(elapsed, 1e-9):.0f}/s")


def exit_status(s: ClientSummary, *, stopped: str | None, interrupted: bool) -> int:
    """130 interrupted; 1 when a reading was rejected or the run stopped early; else 0."""
    if interrupted:
        return 130
    return 0 if s.rejected == 0 and not stopped else 1
