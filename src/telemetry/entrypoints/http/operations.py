"""What operators and their tools ask: /healthz (also on the public app), /readyz and /metrics
(on the operations listener only, see ops.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from telemetry.entrypoints.http.openapi import ReadyBody
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from telemetry.entrypoints.metrics import IngestMetrics

log = logging.getLogger("telemetry.ingest")

# How long a /readyz answer is reused (see Operations).
READY_CACHE_SECONDS = 1.0


class Operations:
    """Readiness of one process: its probes of the queue and the storage.

    One probe at a time, its answer kept briefly: probes call the queue and the storage, and a
    flood of /readyz must not become a flood of calls to them. The lock belongs to the loop
    that serves /readyz (made there: an asyncio lock is bound to the first loop that waits on
    it).
    """

    def __init__(self, queue: Any, storage: Any, clock: Any, metrics: IngestMetrics,
                 ready_timeout: float) -> None:
        self.queue = queue
        self.storage = storage
        self.clock = clock
        self.metrics = metrics
        self.ready_timeout = ready_timeout
        self.was_ready: bool | None = None
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._last: tuple[float, ReadyBody] | None = None

    async def _probe_all(self) -> ReadyBody:
        results = {"queue": "timeout", "storage": "timeout"}

        async def probe(name: str, check: Any) -> None:
            try:
                await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
                results[name] = "ok"
            except Exception:
                results[name] = "unavailable"

        with anyio.move_on_after(self.ready_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe, "queue", self.queue.check)
                tg.start_soon(probe, "storage", self.storage.check)
        ready = all(v == "ok" for v in results.values())
        if ready is not self.was_ready:  # probes come every few seconds: log changes only
            self.was_ready = ready
            event(log, "readiness_changed", logging.INFO if ready else logging.WARNING,
                  ready=ready, **results)
        return ReadyBody("ready" if ready else "unavailable", **results)

    async def ready(self) -> ReadyBody:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            self._locks.clear()  # a loop of the past (tests run one per client)
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:
            cached = self._last
            if cached is None or self.clock.monotonic() - cached[0] >= READY_CACHE_SECONDS:
                cached = self._last = (self.clock.monotonic(), await self._probe_all())
        return cached[1]


@get("/healthz", summary="The process is up", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


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
async def readyz(state: State) -> Response[ReadyBody]:
    operations: Operations = state.ops
    body = await operations.ready()
    return Response(body, status_code=200 if body.status == "ready" else 503)


@get(
    "/metrics",
    summary="Prometheus metrics of this process",
    media_type=METRICS_CONTENT_TYPE,
    tags=["operations"],
)
async def metrics(state: State) -> bytes:
    stats: IngestMetrics = state.metrics
    return stats.render()
