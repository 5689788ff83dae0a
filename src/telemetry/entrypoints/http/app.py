"""The two Litestar apps of one ingest process, built from the container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from telemetry.entrypoints.container import Container
from telemetry.entrypoints.http import ingest, operations
from telemetry.entrypoints.http.openapi import openapi_config
from telemetry.entrypoints.ops import OpsListener
from telemetry.entrypoints.settings import Settings


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


def create_apps(container: Container, *, serve_ops: bool = False) -> IngestApps:
    """The public and operations apps, on the container's metrics and sender; `serve_ops`: the
    public app's start also starts the operations listener on TELEMETRY_OPS_HOST:
    TELEMETRY_OPS_PORT unless that is off (as `serve` does)."""
    settings = container.settings()
    stats = container.ingest_metrics()
    queue, clock = container.queue(), container.clock()
    sender = container.sender()
    state = {
        "metrics": stats,
        "ingest": ingest.IngestEndpoint(
            container.accept_readings(), container.authenticator(),
            container.rate_limiter(), clock, sender, stats,
            max_wire=settings.max_body_bytes, max_inflated=settings.max_decompressed_bytes,
            max_batch=settings.max_batch, enqueue_timeout=settings.enqueue_timeout),
        "ops": operations.Operations(queue, container.storage(), clock, stats,
                                     settings.ready_timeout),
    }
    post_readings = ingest.route(settings.max_batch)
    ops = _litestar(
        [post_readings, operations.healthz, operations.readyz, operations.metrics], state,
        settings, on_shutdown=[sender.stop], openapi_config=openapi_config())
    listener = None
    if serve_ops and settings.ops_port is not None:  # TELEMETRY_OPS_PORT=off: none
        listener = OpsListener(ops, settings.ops_host, settings.ops_port)
    public = _litestar(
        [post_readings, operations.healthz], state, settings,
        on_startup=[listener.start] if listener is not None else [],
        on_shutdown=[*([listener.stop] if listener is not None else []), sender.stop],
        openapi_config=None)
    return IngestApps(public, ops)


def _litestar(handlers: list[Any], state: dict[str, Any], settings: Settings, *,
              on_startup: list[Any] | None = None, on_shutdown: list[Any],
              openapi_config: OpenAPIConfig | None) -> Litestar:
    return Litestar(
        route_handlers=handlers,
        state=State(state),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config,
        # logs.configure owns the root logger; Litestar's default config would replace it.
        logging_config=None,
        debug=False,
    )
