"""The ingest service's Prometheus metrics, on prometheus_client.

One process: a registry of its own per app. Several (`telemetry serve --workers N`, which share
one port, so a scrape reaches whichever process accepts it): `serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the processes start, each process keeps its
values there, and any of them answers `/metrics` with the sum over all of them (prometheus_client's
multiprocess mode; docs/adr/0008-prometheus-metrics.md).

Label children are looked up once and kept, so the hot path pays one increment under the
library's lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# The text format prometheus_client writes is format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Enqueue latency buckets, seconds: SQLite group commit sits in the low milliseconds, SQS in the
# tens; the top buckets catch a struggling queue before enqueue_timeout turns it into 503s.
ENQUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


class _Children:
    """A labelled metric's children, by label tuple, made on first use."""

    def __init__(self, metric: Any, labelled: bool) -> None:
        self._metric = metric
        self._labelled = labelled
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, labels: tuple[str, ...]) -> Any:
        c = self._children.get(labels)
        if c is None:
            c = self._children[labels] = (self._metric.labels(*labels) if self._labelled
                                          else self._metric)
        return c


class CounterFamily(_Children):
    def __init__(self, name: str, help_: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        # prometheus_client adds `_total` to a counter's name itself
        super().__init__(Counter(name.removesuffix("_total"), help_, labelnames,
                                 registry=registry), bool(labelnames))

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.child(labels).inc(amount)


class HistogramFamily(_Children):
    def __init__(self, name: str, help_: str, buckets: Sequence[float],
                 labelnames: Sequence[str], registry: CollectorRegistry | None) -> None:
        super().__init__(Histogram(name, help_, labelnames, registry=registry,
                                   buckets=tuple(buckets)), bool(labelnames))

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.child(labels).observe(value)


# Why a request was rejected: the `reason` label of requests and readings, and of the log line.
REASONS_BY_STATUS: dict[int, tuple[str, ...]] = {
    202: ("accepted",),
    400: ("bad_body", "bad_gzip", "truncated"),
    401: ("unauthorized",),
    403: ("forbidden",),
    413: ("wire_too_large", "decompressed_too_large"),
    415: ("unsupported_type", "unsupported_encoding"),
    422: ("invalid",),
    429: ("rate_limited",),
    500: ("internal_error",),
    503: ("queue_unavailable", "enqueue_timeout"),
}
READING_REJECT_REASONS = ("invalid", "forbidden", "queue_unavailable", "enqueue_timeout",
                          "internal_error")


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class IngestMetrics:
    """What the ingest service counts, and its exposition."""

    def __init__(self) -> None:
        # a `_created` series per counter only doubles the scrape
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._multi = multiprocess()
        # Multiprocess mode keeps the values in files, not in a registry: metrics register
        # nowhere, and `render` collects the files.
        r = None if self._multi else CollectorRegistry(auto_describe=True)
        self._registry = r
        self.requests = CounterFamily(
            "telemetry_ingest_requests_total",
            "POST /v1/readings requests by response status and reason.",
            ("status", "reason"), r,
        )
        self.accepted = CounterFamily(
            "telemetry_readings_accepted_total", "Readings durably enqueued (answered 202).",
            (), r,
        )
        self.rejected = CounterFamily(
            "telemetry_readings_rejected_total",
            "Readings of decoded requests that were not enqueued, by reason. Requests "
            "rejected before their body was decoded count in telemetry_ingest_requests_total.",
            ("reason",), r,
        )
        self.enqueue = HistogramFamily(
            "telemetry_enqueue_seconds",
            "Time for one request's queue send, by outcome (ok, unavailable, timeout).",
            ENQUEUE_BUCKETS, ("outcome",), r,
        )
        help_started = ("Start of this ingest process, Unix time; with several processes, "
                        "one series each.")
        if self._multi:  # the collector adds the `pid` label of each process itself
            started = Gauge("telemetry_process_start_time_seconds", help_started,
                            multiprocess_mode="all")
        else:
            started = Gauge("telemetry_process_start_time_seconds", help_started, ["pid"],
                            registry=r).labels(str(os.getpid()))
        started.set(time.time())
        # Series exist from the start, so rate() and alerts see a 0 rather than nothing.
        for status, reasons in REASONS_BY_STATUS.items():
            for reason in reasons:
                self.requests.inc((str(status), reason), 0)
        for reason in READING_REJECT_REASONS:
            self.rejected.inc((reason,), 0)
        self.accepted.inc((), 0)
        for outcome in ("ok", "unavailable", "timeout"):
            self.enqueue.child((outcome,))

    def request(self, status: int, reason: str) -> None:
        self.requests.inc((str(status), reason))

    def render(self) -> bytes:
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
