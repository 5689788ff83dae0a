"""Prometheus text exposition (format 0.0.4) for the ingest service, without a dependency.

Three metric kinds are all the service needs, so a few dozen lines replace prometheus_client
(see docs/ingest-api.md). Values are updated from the event loop thread only (the handlers are
async and update after their awaits), so no lock is taken on the hot path.

Metrics are per process: with `telemetry serve --workers N` each worker answers `/metrics` with
its own counts.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Enqueue latency buckets, seconds: SQLite group commit sits in the low milliseconds, SQS in the
# tens; the top buckets catch a struggling queue before enqueue_timeout turns it into 503s.
ENQUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self.values[()] = 0.0

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: tuple[str, ...] = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {_num(v)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.values[labels] = value


class Histogram:
    def __init__(
        self, name: str, help_: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        # per label set: cumulative-later bucket counts (last slot is +Inf), sum, count
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0, 0.0])
        counts, total = s
        # the first bound >= value, or the +Inf slot past the end
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value
        total[1] += 1

    def count(self, labels: tuple[str, ...] = ()) -> int:
        s = self.series.get(labels)
        return int(s[1][1]) if s else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, (total, n)) in sorted(self.series.items()):
            running = 0
            for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
                running += c
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {running}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {_num(total)}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {_num(n)}"


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


class IngestMetrics:
    """What the ingest service counts, and its exposition."""

    def __init__(self) -> None:
        self.requests = Counter(
            "telemetry_ingest_requests_total",
            "POST /v1/readings requests by response status and reason.",
            ("status", "reason"),
        )
        self.accepted = Counter(
            "telemetry_readings_accepted_total", "Readings durably enqueued (answered 202)."
        )
        self.rejected = Counter(
            "telemetry_readings_rejected_total",
            "Readings of decoded requests that were not enqueued, by reason. Requests "
            "rejected before their body was decoded count in telemetry_ingest_requests_total.",
            ("reason",),
        )
        self.enqueue = Histogram(
            "telemetry_enqueue_seconds",
            "Time for one request's queue send, by outcome (ok, unavailable, timeout).",
            ENQUEUE_BUCKETS,
            ("outcome",),
        )
        self.started = Gauge(
            "telemetry_process_start_time_seconds",
            "Start of this ingest process, Unix time; with several workers, tells them apart.",
            ("pid",),
        )
        self.started.set(time.time(), (str(os.getpid()),))
        # Series exist from the start, so rate() and alerts see a 0 rather than nothing.
        for status, reasons in REASONS_BY_STATUS.items():
            for reason in reasons:
                self.requests.inc((str(status), reason), 0)
        for reason in READING_REJECT_REASONS:
            self.rejected.inc((reason,), 0)

    def request(self, status: int, reason: str) -> None:
        self.requests.inc((str(status), reason))

    def render(self) -> bytes:
        lines: list[str] = []
        for m in (self.requests, self.accepted, self.rejected, self.enqueue, self.started):
            lines.extend(m.render())
        return ("\n".join(lines) + "\n").encode()
