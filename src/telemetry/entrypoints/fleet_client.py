"""What `simulate` and `replay` need of the ingest client, and when a failed request means
every further one would fail the same way."""

from __future__ import annotations

from typing import Any, Protocol

from telemetry.adapters.ingest_client import ClientSummary


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
