"""The worker's Prometheus metrics (prometheus_client), fed by the drain loop as an observer.

One registry per worker process, served by its operations listener (`ops`); several worker
processes on a host each take a port, and Prometheus sums them (docs/adr/0008). The latency
histograms are rendered at scrape time from the worker's own mergeable distributions (one
observation per reading would cost more than the drain itself), with the classic bucket bounds
below: a bucket counts the values recorded at most 1% under its bound (see `latency`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from telemetry.domain.drain import FileWritten, PollResult
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.ports.depth import QueueDepth

log = logging.getLogger("telemetry.worker")

# Seconds. received -> stored sits around the batch max age; ts -> stored adds the vehicles'
# lateness, which runs to hours after a connectivity gap.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                   1800.0, 3600.0, 21600.0, 86400.0)
DEPTH_EVERY_S = 5.0


class _Latency(Collector):
    def __init__(self, name: str, doc: str, dist: Callable[[], LatencyDistribution]) -> None:
        self.name, self.doc, self.dist = name, doc, dist

    def collect(self) -> Iterator[HistogramMetricFamily]:
        d = self.dist()
        buckets = [(repr(b), float(d.count_below(b * 1000))) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", float(d.count)))
        yield HistogramMetricFamily(self.name, self.doc, buckets=buckets,
                                    sum_value=d.total_ms / 1000)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.doc)


class WorkerMetrics:
    """A WorkerObserver that counts; `registry` is what the listener serves."""

    def __init__(self, depth: Callable[[], QueueDepth] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        # a `_created` series per counter only doubles the scrape
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._depth = depth
        self._monotonic = monotonic
        self._depth_at: float | None = None
        self.received_to_stored = LatencyDistribution()
        self.ts_to_stored = LatencyDistribution()
        self.readings = Counter("telemetry_worker_readings", "Readings stored in raw files.",
                                registry=r)
        self.files = Counter("telemetry_worker_files", "Raw files written to the lake.",
                             registry=r)
        self.bytes = Counter("telemetry_worker_written_bytes",
                             "Bytes of raw files written to the lake (compressed when on).",
                             registry=r)
        self.messages = Counter("telemetry_worker_messages_received",
                                "Queue messages received, redeliveries included.", registry=r)
        self.poison = Counter("telemetry_worker_poison_messages",
                              "Messages that could not be unpacked; left for the dead-letter "
                              "queue.", registry=r)
        self.retries = Counter("telemetry_worker_retries",
                               "Polls or flushes that failed on a queue or lake fault and were "
                               "retried after a backoff.", registry=r)
        self.faults = Counter("telemetry_worker_fault_episodes",
                              "Runs of consecutive faults (each ends with a recovery or the "
                              "stop).", registry=r)
        r.register(_Latency("telemetry_worker_received_to_stored_seconds",
                            "Per reading: ingest's acceptance to its raw file stored.",
                            lambda: self.received_to_stored))
        r.register(_Latency("telemetry_worker_ts_to_stored_seconds",
                            "Per reading: the vehicle's timestamp to its raw file stored.",
                            lambda: self.ts_to_stored))
        self.oldest_received = Gauge(
            "telemetry_worker_oldest_received_message_age_seconds",
            "Of the messages of the last receive that returned any, the longest one had waited "
            "since ingest accepted it.", registry=r)
        self.queue_messages = Gauge(
            "telemetry_queue_messages", "Messages in the queue: visible (the backlog) or in "
            "flight (received, not yet deleted).", ["state"], registry=r)
        # Registered once the queue gives them: SQS has no dead-letter queue unless one is
        # configured, and publishes the oldest age to CloudWatch only.
        self.queue_dead: Gauge | None = None
        self.queue_oldest: Gauge | None = None
        self.queue_up = Gauge("telemetry_queue_depth_up",
                              "1 when the last look at the queue's depth succeeded.", registry=r)

    # ---------------------------------------------------------- WorkerObserver

    def polled(self, result: PollResult) -> None:
        self.messages.inc(result.received)
        self.poison.inc(len(result.poison))
        if result.oldest_age_ms is not None:
            self.oldest_received.set(result.oldest_age_ms / 1000)

    def stored(self, files: Sequence[FileWritten]) -> None:
        for f in files:
            self.readings.inc(f.readings)
            self.files.inc()
            self.bytes.inc(f.bytes)
            # New objects, swapped in whole: a scrape on the listener's thread reads either.
            self.received_to_stored = self.received_to_stored.merge(f.received_to_stored)
            self.ts_to_stored = self.ts_to_stored.merge(f.ts_to_stored)

    def faulted(self, new_episode: bool) -> None:
        self.retries.inc()
        if new_episode:
            self.faults.inc()

    def idle(self) -> None:
        now = self._monotonic()
        if self._depth_at is not None and now - self._depth_at < DEPTH_EVERY_S:
            return
        self.refresh_depth()

    def stopped(self) -> None:
        self.refresh_depth()

    def refresh_depth(self) -> None:
        if self._depth is None:
            return
        self._depth_at = self._monotonic()
        try:
            d = self._depth()
        except QueueUnavailable:
            self.queue_up.set(0)
            return
        self.queue_up.set(1)
        self.queue_messages.labels("visible").set(d.visible)
        self.queue_messages.labels("in_flight").set(d.in_flight)
        if d.dead_letters is not None:
            if self.queue_dead is None:
                self.queue_dead = Gauge("telemetry_queue_dead_letter_messages",
                                        "Messages in the dead-letter queue.",
                                        registry=self.registry)
            self.queue_dead.set(d.dead_letters)
        if d.oldest_age_s is not None:
            if self.queue_oldest is None:
                self.queue_oldest = Gauge("telemetry_queue_oldest_message_age_seconds",
                                          "Age of the oldest message in the queue, 0 when "
                                          "empty.", registry=self.registry)
            self.queue_oldest.set(d.oldest_age_s)
