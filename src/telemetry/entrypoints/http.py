"""The Litestar apps: decoding, authentication, limits and error mapping, nothing else.

Bodies are read and decoded here (`bodies.py`), not by Litestar's signature model, so the
contract's statuses hold exactly: 400 only for what cannot be decoded, 413 while the body
streams in, 422 with problems by reading index and field. The order of checks is the order of
cost: headers (401, 429, 415, 413 by Content-Length), then the body (413, 422 for too many
readings before any is decoded, 400), then the rules (422, 403), then the queue (503). Nothing
is enqueued before every check passed.

Two apps share one process's state: the public one (the API and /healthz) and the operations
one (/metrics, /readyz, /schema), served on a port of its own (`ops.py`).

The success path does no logging and no work that could be done once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)

from telemetry.domain.errors import Forbidden, InvalidReadings, Problem, QueueUnavailable
from telemetry.domain.ratelimit import RateLimiter
from telemetry.domain.readings import Reading, ReadingBatch
from telemetry.entrypoints import bodies, slow_clients
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from telemetry.entrypoints.metrics import READING_REJECT_REASONS, IngestMetrics
from telemetry.entrypoints.ops import OpsListener
from telemetry.entrypoints.settings import Settings, load_settings

log = logging.getLogger("telemetry.ingest")

# 503: the queue usually comes back within seconds; clients back off further on their own.
UNAVAILABLE_RETRY_AFTER = "1"
# Threads for queue sends: as many sends may be inside the queue adapter at once (the SQLite
# queue commits concurrent sends as one group; SQS sends wait on the network). A send waiting
# for a free thread counts against the enqueue timeout like one waiting for the queue, so a
# hung queue still answers 503 in time.
SEND_THREADS = 64
# How long a /readyz answer is reused (see readyz).
READY_CACHE_SECONDS = 1.0
# Allocations (net of frees) of container objects between two young collections; see _tune_gc.
GC_GEN0_THRESHOLD = 20_000


# ------------------------------------------------------------------ response shapes (OpenAPI)


class AcceptedBody(msgspec.Struct):
    """Every reading of the request is durably enqueued."""

    accepted: int
    reading_ids: list[str]


class ErrorBody(msgspec.Struct):
    """Litestar's error body."""

    status_code: int
    detail: str


class ProblemBody(msgspec.Struct):
    index: int
    field: str
    message: str


class InvalidBody(msgspec.Struct):
    """422: `extra` lists every problem; `index` -1 is the request as a whole."""

    status_code: int
    detail: str
    extra: list[ProblemBody]


class ReadyBody(msgspec.Struct):
    status: str
    queue: str
    storage: str


_encode = msgspec.json.Encoder().encode


# ------------------------------------------------------------------ the queue sender


# A list, not a tuple: a request that stops waiting empties its job, so the bodies of sends
# abandoned while the queue hangs are not held until a thread comes to skip them.
_Job = list[Any]  # [loop, done future, bodies]


class _Sender:
    """Threads that run the blocking `queue.send` for the event loop.

    Per request this is a queue put, a timer and one wake-up of the loop: a fraction of the
    CPU of anyio's to_thread (capacity limiter, cancel scopes) or an executor's futures, which
    the ingest profile showed as a seventh of the request. Threads start on first use and
    stay: the sends of a busy server keep them busy.
    """

    def __init__(self, send: Callable[[list[bytes]], None], threads: int) -> None:
        self._send = send
        self._threads = threads
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._started = 0

    async def send(self, messages: list[bytes], timeout: float) -> None:
        """Raise TimeoutError after `timeout` s. The send is abandoned, not stopped then: one
        not started yet never runs, one running may still enqueue after the 503. The client's
        retry carries the same reading ids, and every downstream stage dedupes on them."""
        if self._started < self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _expire, done)
        job: _Job = [loop, done, messages]
        self._jobs.put(job)
        try:
            await done
        finally:
            timer.cancel()
            if not done.done():  # the request was cancelled: the job must not run any more
                done.cancel()
            job[2] = None

    def _start(self) -> None:
        while self._started < self._threads:
            threading.Thread(target=self._run, name=f"enqueue-{self._started}",
                             daemon=True).start()
            self._started += 1

    def _run(self) -> None:
        get, send = self._jobs.get, self._send
        while (job := get()) is not None:
            loop, done, messages = job
            if done.done() or messages is None:  # timed out, or the request went away
                continue
            error: BaseException | None = None
            try:
                send(messages)
            except BaseException as exc:  # handed to the request, which maps it
                error = exc
            # RuntimeError: the loop is closed, nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, error)

    def stop(self) -> None:
        """Let the threads end once the sends queued before this are done."""
        for _ in range(self._started):
            self._jobs.put(None)
        self._started = 0


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # expired meanwhile: the request has answered 503
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


# ------------------------------------------------------------------ rejections


@dataclass(eq=False)
class Rejected(Exception):
    """A request the service answers with a 4xx/5xx: what the client, the metrics and the
    log line each need."""

    status: int
    reason: str
    detail: str
    headers: dict[str, str] | None = None
    extra: list[dict[str, Any]] | None = None
    cause: str = ""  # for the log only: an adapter's error text is not the client's business


@dataclass(slots=True)
class _Seen:
    """What a request revealed before it was rejected, for its metrics and its log line."""

    key_name: str | None = None
    readings: int = 0


def _problems_extra(problems: list[Problem]) -> list[dict[str, Any]]:
    return [{"index": p.index, "field": p.field, "message": p.message} for p in problems]


def _from_body_error(exc: bodies.BodyError) -> Rejected:
    extra = _problems_extra(exc.problems) if isinstance(exc, bodies.Unprocessable) else None
    headers = None
    if exc.status == 413 or exc.reason == "truncated":
        # The rest of the body is not read: close rather than parse it as the next request.
        headers = {"Connection": "close"}
    return Rejected(exc.status, exc.reason, exc.detail, headers=headers, extra=extra)


# Bodies up to this size are decoded on the event loop; bigger ones in a worker thread, so one
# hostile 8 MiB body does not stall every other request (the Python parts of decoding, such as
# listing problems, then share the interpreter with the loop; see docs/security.md).
_DECODE_INLINE_BYTES = 256 * 1024


# ------------------------------------------------------------------ OpenAPI metadata


def _inline_schema(tp: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of `tp` with every `$ref` resolved in place.

    Litestar rebuilds `components.schemas` from the types it sees, and it never sees the
    request body (the handler reads it raw), so the body schema must stand on its own.
    """
    (root,), defs = msgspec.json.schema_components((tp,), ref_template="{name}")

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    out: dict[str, Any] = resolve(root)
    return out


_EXAMPLE_READING: dict[str, Any] = {
    "vehicle_id": "car-1",
    "ts": "2026-11-29T01:02:03.250Z",
    "signals": {"Vehicle.Speed": 42.5, "Vehicle.IsMoving": True, "Vehicle.Gear": "D"},
}
_EXAMPLE_BATCH = {"readings": [_EXAMPLE_READING, {**_EXAMPLE_READING, "reading_id": "car-1:7"}]}


def _ingest_operation(max_batch: int) -> type[Operation]:
    """The operation of `POST /v1/readings` with what Litestar cannot infer from a handler
    that reads its body raw: the request body in its three formats, and Retry-After."""
    batch = _inline_schema(ReadingBatch)
    batch["properties"]["readings"].update(minItems=1, maxItems=max_batch)
    reading = _inline_schema(Reading)

    @dataclass
    class IngestOperation(Operation):
        def __post_init__(self) -> None:
            self._add_request_body()
            self._add_retry_after()

        def _add_request_body(self) -> None:
            self.request_body = RequestBody(
                required=True,
                description=(
                    f"1..{max_batch} readings. At most 1 MiB on the wire and 8 MiB after "
                    "`Content-Encoding: gzip` (defaults, both configurable). Unknown fields "
                    "are rejected. `reading_id` is derived from the content when absent."
                ),
                content={
                    bodies.JSON: OpenAPIMediaType(
                        schema=batch,  # type: ignore[arg-type]  # JSON Schema as msgspec emits
                        examples={"two readings": Example(value=_EXAMPLE_BATCH)},
                    ),
                    bodies.NDJSON: OpenAPIMediaType(
                        schema=reading,  # type: ignore[arg-type]
                        examples={"one reading per line": Example(
                            summary="each line is one reading object; blank lines are skipped",
                            value=_EXAMPLE_READING,
                        )},
                    ),
                    bodies.MSGPACK: OpenAPIMediaType(
                        schema=batch,  # type: ignore[arg-type]
                        examples={"two readings": Example(
                            summary="the JSON shape, msgpack-encoded; `ts` may also be a "
                            "msgpack timestamp",
                            value=_EXAMPLE_BATCH,
                        )},
                    ),
                },
            )

        def _add_retry_after(self) -> None:
            retry_after = OpenAPIHeader(
                description="Seconds to wait before retrying.",
                schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
                required=True,
            )
            for code in ("429", "503"):
                response = (self.responses or {}).get(code)
                if response is not None and hasattr(response, "headers"):
                    response.headers = {"Retry-After": retry_after}

    return IngestOperation


def _error(description: str, status: int, detail: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ErrorBody,
        description=description,
        generate_examples=False,
        examples=[Example(value={"status_code": status, "detail": detail})],
    )


_INGEST_RESPONSES: dict[int, ResponseSpec] = {
    202: ResponseSpec(
        data_container=AcceptedBody,
        description="Every reading is durably enqueued; ids in request order.",
        generate_examples=False,
        examples=[Example(value={"accepted": 2, "reading_ids": [
            "5f0c3b1f3f1e4c2b9d0a7e6f5a4b3c2d", "car-1:7"]})],
    ),
    400: _error("The body is not decodable: bad JSON, NDJSON, msgpack or gzip, a wrong "
                "top-level shape, or a body cut off before its Content-Length.",
                400, 'body must be an object {"readings": [reading, ...]}'),
    401: _error("Missing or unknown API key (never says which).",
                401, "missing or unknown API key"),
    403: _error("The key may not send for one of the vehicle ids.",
                403, "not allowed for vehicle(s): truck-9"),
    413: _error("The body is over the wire limit or, inflated, over the decompressed limit.",
                413, "body exceeds the limit of 1048576 bytes"),
    415: _error("Unsupported Content-Type or Content-Encoding.",
                415, "unsupported content type 'text/plain'"),
    422: ResponseSpec(
        data_container=InvalidBody,
        description="A reading breaks a rule, or the request holds no reading or more than "
        "max batch; `extra` lists every problem with the reading's index (-1: the request) "
        "and the field.",
        generate_examples=False,
        examples=[Example(value={
            "status_code": 422,
            "detail": "1 reading(s) break the rules",
            "extra": [{"index": 3, "field": "ts", "message": "before 2000-01-01T00:00:00Z"}],
        })],
    ),
    429: _error("The key's rate limit is exceeded; retry after Retry-After seconds.",
                429, "rate limit exceeded"),
    500: _error("An unexpected error. Retrying is safe: reading ids make it idempotent.",
                500, "Internal Server Error"),
    503: _error("The queue is unavailable or did not answer in time; retry after "
                "Retry-After seconds. Retrying is safe: reading ids make it idempotent.",
                503, "queue unavailable, retry later"),
}


# ------------------------------------------------------------------ the app


@dataclass(frozen=True)
class IngestApps:
    """The two listeners of one ingest process, sharing its sender, limiter and metrics.

    `public` answers only the API and /healthz: what vehicles need, and nothing that reveals
    the deployment or calls the queue and storage on an unauthenticated request. `ops`, for the
    operations listener (`entrypoints/ops.py`, loopback by default), answers everything:
    /metrics, /readyz, /schema, and the API itself, so that the document it serves describes
    operations that all exist where it is served.
    """

    public: Litestar
    ops: Litestar


def create_apps(
    container: Container, settings: Settings, *, metrics: IngestMetrics | None = None,
    serve_ops: bool = False,
) -> IngestApps:
    """The public and operations apps; `serve_ops`: the public app's start also starts the
    operations listener on TELEMETRY_OPS_HOST:TELEMETRY_OPS_PORT (as `serve` does)."""
    accept = container.accept_readings()
    authenticator = container.authenticator()
    queue = container.queue()
    storage = container.storage()
    clock = container.clock()
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    stats = metrics if metrics is not None else IngestMetrics()
    max_wire = settings.max_body_bytes
    max_inflated = settings.max_decompressed_bytes
    enqueue_timeout = settings.enqueue_timeout
    ready_timeout = settings.ready_timeout
    max_batch = settings.max_batch
    unavailable_headers = {"Retry-After": UNAVAILABLE_RETRY_AFTER}

    sender = _Sender(queue.send, SEND_THREADS)

    async def enqueue(messages: list[bytes]) -> None:
        start = time.perf_counter()
        outcome = "ok"
        try:
            await sender.send(messages, enqueue_timeout)
        except TimeoutError:
            outcome = "timeout"
            raise Rejected(503, "enqueue_timeout", "queue did not answer in time, retry later",
                           headers=unavailable_headers,
                           cause=f"no answer within {enqueue_timeout:g} s") from None
        except QueueUnavailable as exc:
            outcome = "unavailable"
            raise Rejected(503, "queue_unavailable", "queue unavailable, retry later",
                           headers=unavailable_headers, cause=str(exc)) from None
        finally:
            stats.enqueue.observe(time.perf_counter() - start, (outcome,))

    async def ingest(request: Request[Any, Any, Any], seen: _Seen) -> Response[bytes]:
        headers = request.headers
        principal = authenticator.authenticate(headers.get("x-api-key"))
        if principal is None:
            raise Rejected(401, "unauthorized", "missing or unknown API key")
        seen.key_name = principal.name
        wait = limiter.take(principal.key_id, clock.monotonic())
        if wait:
            raise Rejected(429, "rate_limited", "rate limit exceeded",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        fmt = bodies.media_type(headers.get("content-type"))
        gzip = bodies.is_gzip(headers.get("content-encoding"))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_wire:
            # Refused before reading a byte of it.
            raise bodies.TooLarge("wire_too_large", f"body exceeds the limit of {max_wire} bytes")
        body = await bodies.read_body(
            request.receive, gzip=gzip, max_wire=max_wire, max_inflated=max_inflated
        )
        try:
            if len(body) <= _DECODE_INLINE_BYTES:
                readings = bodies.decode_checked(fmt, body, max_batch)
            else:
                readings = await anyio.to_thread.run_sync(
                    bodies.decode_checked, fmt, body, max_batch)
        except bodies.Unprocessable as why:
            seen.readings = why.readings
            raise
        seen.readings = len(readings)
        try:
            accepted = accept.execute(readings, principal)
        except InvalidReadings as exc:
            raise bodies.Unprocessable(exc.problems, len(readings)) from None
        except Forbidden as exc:
            raise Rejected(403, "forbidden", str(exc)) from None
        await enqueue(accepted.messages)
        ids = accepted.reading_ids
        stats.request(202, "accepted")
        stats.accepted.inc(amount=len(ids))
        return Response(
            _encode(AcceptedBody(len(ids), ids)), status_code=202, media_type="application/json"
        )

    @post(
        "/v1/readings",
        status_code=202,
        summary="Send readings",
        description="Authenticate, validate and durably enqueue a batch of readings: all of "
        "them or none. Bodies: JSON `{\"readings\": [...]}`, NDJSON (one reading per line) or "
        "msgpack (the JSON shape), each optionally `Content-Encoding: gzip`.",
        operation_class=_ingest_operation(settings.max_batch),
        responses=_INGEST_RESPONSES,
        security=[{"ApiKey": []}],
        tags=["ingest"],
    )
    async def post_readings(request: Request[Any, Any, Any]) -> Response[bytes]:
        seen = _Seen()
        try:
            return await ingest(request, seen)
        except (Rejected, bodies.BodyError) as exc:
            r = _from_body_error(exc) if isinstance(exc, bodies.BodyError) else exc
            stats.request(r.status, r.reason)
            if seen.readings and r.reason in READING_REJECT_REASONS:
                stats.rejected.inc((r.reason,), seen.readings)
            fields: dict[str, Any] = {
                "status": r.status, "reason": r.reason, "key_name": seen.key_name,
                "readings": seen.readings, "detail": r.detail[:300],
                "client": request.client.host if request.client else None,
            }
            if r.cause:
                fields["cause"] = r.cause
            event(log, "request_rejected", logging.WARNING if r.status >= 500 else logging.INFO,
                  **fields)
            raise HTTPException(
                status_code=r.status, detail=r.detail, headers=r.headers, extra=r.extra
            ) from None
        except Exception:
            stats.request(500, "internal_error")
            if seen.readings:
                stats.rejected.inc(("internal_error",), seen.readings)
            log.error("request_failed", exc_info=True, extra={"fields": {
                "status": 500, "reason": "internal_error", "key_name": seen.key_name,
                "readings": seen.readings}})
            raise HTTPException(status_code=500, detail="Internal Server Error") from None

    @get("/healthz", summary="The process is up", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    was_ready: list[bool | None] = [None]
    # One probe at a time, its answer kept briefly: probes call the queue and the storage, and
    # a flood of /readyz must not become a flood of calls to them.
    # The lock belongs to the loop that serves /readyz (made there: an asyncio lock is bound to
    # the first loop that waits on it).
    ready_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
    last_ready: list[tuple[float, ReadyBody] | None] = [None]

    async def probe_all() -> ReadyBody:
        results = {"queue": "timeout", "storage": "timeout"}

        async def probe(name: str, check: Any) -> None:
            try:
                await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
                results[name] = "ok"
            except Exception:
                results[name] = "unavailable"

        with anyio.move_on_after(ready_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe, "queue", queue.check)
                tg.start_soon(probe, "storage", storage.check)
        ready = all(v == "ok" for v in results.values())
        if ready is not was_ready[0]:  # probes come every few seconds: log changes only
            was_ready[0] = ready
            event(log, "readiness_changed", logging.INFO if ready else logging.WARNING,
                  ready=ready, **results)
        return ReadyBody("ready" if ready else "unavailable", **results)

    @get(
        "/readyz",
        summary="Queue and storage answer",
        tags=["operations"],
        responses={
            200: ResponseSpec(ReadyBody, description="Queue and storage answered."),
            503: ResponseSpec(ReadyBody, description="Queue or storage did not answer "
                              "(`unavailable`) or not in time (`timeout`)."),
        },
    )
    async def readyz() -> Response[ReadyBody]:
        loop = asyncio.get_running_loop()
        lock = ready_locks.get(loop)
        if lock is None:
            ready_locks.clear()  # a loop of the past (tests run one per client)
            lock = ready_locks[loop] = asyncio.Lock()
        async with lock:
            cached = last_ready[0]
            if cached is None or clock.monotonic() - cached[0] >= READY_CACHE_SECONDS:
                cached = last_ready[0] = (clock.monotonic(), await probe_all())
        body = cached[1]
        return Response(body, status_code=200 if body.status == "ready" else 503)

    @get(
        "/metrics",
        summary="Prometheus metrics of this process",
        media_type=METRICS_CONTENT_TYPE,
        tags=["operations"],
    )
    async def metrics_handler() -> bytes:
        return stats.render()

    openapi = OpenAPIConfig(
        title="Fleet telemetry ingest",
        version="1",
        description="Vehicles post readings; the service answers 202 only once they are "
        "durably enqueued. See docs/ingest-api.md.",
        # /schema itself is the JSON document (as the contract says); a browsable UI sits at
        # /schema/swagger (it loads its assets from a CDN).
        render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]),
                        SwaggerRenderPlugin(path="/swagger")],
        components=Components(security_schemes={
            "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header",
                                     description="`tk_<id>_<secret>`, from `telemetry keys "
                                     "create`"),
        }),
    )
    ops = Litestar(
        route_handlers=[post_readings, healthz, readyz, metrics_handler],
        on_shutdown=[sender.stop],
        request_max_body_size=max_wire,
        openapi_config=openapi,
        # logs.configure owns the root logger; Litestar's default config would replace it.
        logging_config=None,
        debug=False,
    )
    listener = OpsListener(ops, settings.ops_host, settings.ops_port) if serve_ops else None
    public = Litestar(
        route_handlers=[post_readings, healthz],
        on_startup=[listener.start] if listener is not None else [],
        on_shutdown=[*([listener.stop] if listener is not None else []), sender.stop],
        request_max_body_size=max_wire,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    return IngestApps(public, ops)


def app_from_env() -> Litestar:
    """Factory for `uvicorn --factory`: each server process builds its own container."""
    settings = load_settings()
    from telemetry.entrypoints import logs

    logs.configure(settings.log_format, settings.log_level)
    slow_clients.configure(settings.header_timeout)
    apps = create_apps(create_container(settings), settings, serve_ops=True)
    _tune_gc()
    return apps.public


def _tune_gc() -> None:
    """Fewer, cheaper collections in a server process.

    A decoded request holds a few thousand container objects at once (a dict and a struct per
    reading), so the default gen0 threshold (700) collected every few requests, each time
    promoting the request's live objects to be scanned again by gen1 and gen2 collections
    that also walked every object of the framework. Freezing what start-up built takes it out
    of every later collection; the higher threshold lets a request's objects die by reference
    count before a collection sees them. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
