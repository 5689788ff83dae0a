"""Every way `POST /v1/readings` says no: one exception type per outcome, one table from type
to status, and the two handlers Litestar calls for them.

Each rejection carries what the client, the metrics and the log line need: `reason` (a metric
label and log field), `detail` (the client's message), the response's headers, `extra` (the
problems of a 422) and `cause` (an adapter's error, for the log only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType

from telemetry.domain.errors import Problem
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.metrics import READING_REJECT_REASONS

log = logging.getLogger("telemetry.ingest")

# A 422 lists this many problems at most, and its detail says how many there are in all: enough
# for a client to see what is wrong, and a hostile body cannot make the answer large.
MAX_LISTED_PROBLEMS = 100
# 503: the queue usually comes back within seconds; clients back off further on their own.
UNAVAILABLE_RETRY_AFTER = "1"
# The rest of the body is not read: close rather than parse it as the next request.
_CLOSE = {"Connection": "close"}


class Rejected(Exception):
    """A request the service answers with a 4xx/5xx; the status is `STATUS[type(exc)]`."""

    def __init__(self, reason: str, detail: str, *, headers: dict[str, str] | None = None,
                 extra: list[dict[str, Any]] | None = None, cause: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.headers = headers
        self.extra = extra
        self.cause = cause  # an adapter's error text is not the client's business

    @property
    def status(self) -> int:
        return STATUS[type(self)]


class BadBody(Rejected):
    """The body cannot be decoded (or was cut off before its Content-Length)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, headers=_CLOSE if reason == "truncated" else None)


class Unauthorized(Rejected):
    def __init__(self) -> None:
        super().__init__("unauthorized", "missing or unknown API key")


class VehicleNotAllowed(Rejected):
    def __init__(self, detail: str) -> None:
        super().__init__("forbidden", detail)


class TooLarge(Rejected):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, headers=_CLOSE)


class UnsupportedMedia(Rejected):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)


class Unprocessable(Rejected):
    """Readings that decode but break a rule; `readings`: how many the request held."""

    def __init__(self, problems: list[Problem], readings: int) -> None:
        n = len({p.index for p in problems if p.index >= 0})
        detail = f"{n} reading(s) break the rules" if n else "the request breaks the rules"
        if len(problems) > MAX_LISTED_PROBLEMS:
            detail += f"; the first {MAX_LISTED_PROBLEMS} of {len(problems)} problems are listed"
        self.problems = problems[:MAX_LISTED_PROBLEMS]
        self.readings = readings
        super().__init__("invalid", detail, extra=[
            {"index": p.index, "field": p.field, "message": p.message} for p in self.problems])


class RateLimited(Rejected):
    def __init__(self, retry_after: int) -> None:
        super().__init__("rate_limited", "rate limit exceeded",
                         headers={"Retry-After": str(retry_after)})


class QueueUnavailableError(Rejected):
    """`queue_unavailable` (the queue said no) or `enqueue_timeout` (it did not answer)."""

    def __init__(self, reason: str, detail: str, cause: str) -> None:
        super().__init__(reason, detail, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER},
                         cause=cause)


# The one table from outcome to status.
STATUS: dict[type[Rejected], int] = {
    BadBody: 400,
    Unauthorized: 401,
    VehicleNotAllowed: 403,
    TooLarge: 413,
    UnsupportedMedia: 415,
    Unprocessable: 422,
    RateLimited: 429,
    QueueUnavailableError: 503,
}


@dataclass(slots=True)
class Seen:
    """What a request revealed before it was rejected, for its metrics and its log line."""

    key_name: str | None = None
    readings: int = 0


def _error_response(status: int, detail: str, headers: dict[str, str] | None = None,
                    extra: list[dict[str, Any]] | None = None) -> Response[Any]:
    """The body Litestar gives an HTTPException: `status_code`, `detail`, `extra` if any."""
    content: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra is not None:
        content["extra"] = extra
    return Response(content, status_code=status, headers=headers, media_type=MediaType.JSON)


def _seen(request: Request[Any, Any, Any]) -> Seen:
    seen = request.state.get("seen")
    return seen if isinstance(seen, Seen) else Seen()


def on_rejected(request: Request[Any, Any, Any], exc: Rejected) -> Response[Any]:
    status = STATUS[type(exc)]
    seen = _seen(request)
    stats = request.app.state.metrics
    stats.request(status, exc.reason)
    if seen.readings and exc.reason in READING_REJECT_REASONS:
        stats.rejected.inc((exc.reason,), seen.readings)
    fields: dict[str, Any] = {
        "status": status, "reason": exc.reason, "key_name": seen.key_name,
        "readings": seen.readings, "detail": exc.detail[:300],
        "client": request.client.host if request.client else None,
    }
    if exc.cause:
        fields["cause"] = exc.cause
    event(log, "request_rejected", logging.WARNING if status >= 500 else logging.INFO, **fields)
    return _error_response(status, exc.detail, exc.headers, exc.extra)


def on_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    seen = _seen(request)
    stats = request.app.state.metrics
    stats.request(500, "internal_error")
    if seen.readings:
        stats.rejected.inc(("internal_error",), seen.readings)
    log.error("request_failed", exc_info=exc, extra={"fields": {
        "status": 500, "reason": "internal_error", "key_name": seen.key_name,
        "readings": seen.readings}})
    return _error_response(500, "Internal Server Error")
