"""`POST /v1/readings`: authenticate, limit, read, decode, check, enqueue; nothing else.

The order of checks is the order of cost: headers (401, 429, 415, 413 by Content-Length), then
the body (413, 422 for too many readings before any is decoded, 400), then the rules (422,
403), then the queue (503). Nothing is enqueued before every check passed. Every refusal is a
`Rejected` (errors.py), turned into its status by the route's exception handlers.

The success path does no logging and no work that could be done once at start.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State

from telemetry.domain.accept import AcceptReadings
from telemetry.domain.errors import Forbidden, InvalidReadings, QueueUnavailable
from telemetry.domain.ports.rate_limits import RateLimits
from telemetry.entrypoints.http import bodies
from telemetry.entrypoints.http.errors import (
    QueueUnavailableError,
    RateLimited,
    Rejected,
    Seen,
    TooLarge,
    Unauthorized,
    Unprocessable,
    VehicleNotAllowed,
    on_internal_error,
    on_rejected,
)
from telemetry.entrypoints.http.openapi import INGEST_RESPONSES, AcceptedBody, ingest_operation
from telemetry.entrypoints.http.sender import Sender
from telemetry.entrypoints.metrics import IngestMetrics

# Bodies up to this size are decoded on the event loop; bigger ones in a worker thread, so one
# hostile 8 MiB body does not stall every other request (the Python parts of decoding, such as
# listing problems, then share the interpreter with the loop; see docs/security.md).
_DECODE_INLINE_BYTES = 256 * 1024

_encode = msgspec.json.Encoder().encode


class IngestEndpoint:
    """What one process's ingest route needs, built once at start."""

    def __init__(self, accept: AcceptReadings, authenticator: Any, limiter: RateLimits,
                 clock: Any, sender: Sender, metrics: IngestMetrics, *, max_wire: int,
                 max_inflated: int, max_batch: int, enqueue_timeout: float) -> None:
        self.accept = accept
        self.authenticator = authenticator
        self.limiter = limiter
        self.clock = clock
        self.sender = sender
        self.metrics = metrics
        self.max_wire = max_wire
        self.max_inflated = max_inflated
        self.max_batch = max_batch
        self.enqueue_timeout = enqueue_timeout

    async def _enqueue(self, messages: list[bytes]) -> None:
        start = time.perf_counter()
        outcome = "ok"
        try:
            await self.sender.send(messages, self.enqueue_timeout)
        except TimeoutError:
            outcome = "timeout"
            raise QueueUnavailableError(
                "enqueue_timeout", "queue did not answer in time, retry later",
                cause=f"no answer within {self.enqueue_timeout:g} s") from None
        except QueueUnavailable as exc:
            outcome = "unavailable"
            raise QueueUnavailableError("queue_unavailable", "queue unavailable, retry later",
                                        cause=str(exc)) from None
        finally:
            self.metrics.enqueue.observe(time.perf_counter() - start, (outcome,))

    async def handle(self, request: Request[Any, Any, Any], seen: Seen) -> Response[bytes]:
        headers = request.headers
        principal = self.authenticator.authenticate(headers.get("x-api-key"))
        if principal is None:
            raise Unauthorized()
        seen.key_name = principal.name
        wait = self.limiter.take(principal.key_id, self.clock.monotonic())
        if wait:
            raise RateLimited(max(1, math.ceil(wait)))
        fmt = bodies.media_type(headers.get("content-type"))
        gzip = bodies.is_gzip(headers.get("content-encoding"))
        declared = headers.get("content-length", "")
        max_wire, max_batch = self.max_wire, self.max_batch
        if declared.isdigit() and int(declared) > max_wire:
            # Refused before reading a byte of it.
            raise TooLarge("wire_too_large", f"body exceeds the limit of {max_wire} bytes")
        body = await bodies.read_body(
            request.receive, gzip=gzip, max_wire=max_wire, max_inflated=self.max_inflated
        )
        try:
            if len(body) <= _DECODE_INLINE_BYTES:
                readings = bodies.decode_checked(fmt, body, max_batch)
            else:
                readings = await anyio.to_thread.run_sync(
                    bodies.decode_checked, fmt, body, max_batch)
        except Unprocessable as why:
            seen.readings = why.readings
            raise
        seen.readings = len(readings)
        try:
            accepted = self.accept.execute(readings, principal)
        except InvalidReadings as exc:
            raise Unprocessable(exc.problems, len(readings)) from None
        except Forbidden as exc:
            raise VehicleNotAllowed(str(exc)) from None
        await self._enqueue(accepted.messages)
        ids = accepted.reading_ids
        self.metrics.request(202, "accepted")
        self.metrics.accepted.inc(amount=len(ids))
        return Response(
            _encode(AcceptedBody(len(ids), ids)), status_code=202, media_type="application/json"
        )


async def post_readings(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    seen = request.state.seen = Seen()
    endpoint: IngestEndpoint = state.ingest
    return await endpoint.handle(request, seen)


def route(max_batch: int) -> Any:
    """The route handler of `POST /v1/readings`; its exception handlers apply to it only, so
    404 and 405 elsewhere stay Litestar's."""
    return post(
        "/v1/readings",
        status_code=202,
        summary="Send readings",
        description="Authenticate, validate and durably enqueue a batch of readings: all of "
        "them or none. Bodies: JSON `{\"readings\": [...]}`, NDJSON (one reading per line) or "
        "msgpack (the JSON shape), each optionally `Content-Encoding: gzip`.",
        operation_class=ingest_operation(max_batch),
        responses=INGEST_RESPONSES,
        security=[{"ApiKey": []}],
        tags=["ingest"],
        exception_handlers={Rejected: on_rejected, Exception: on_internal_error},
    )(post_readings)
