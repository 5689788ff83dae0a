"""The drain loop: poll, write files, log each one; back off on faults; stop gracefully."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from telemetry.domain.errors import QueueUnavailable, StorageUnavailable
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.services import DrainBatches, FileWritten
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry.worker")


@dataclass
class WorkerStats:
    files: int = 0
    readings: int = 0
    bytes: int = 0
    received_to_stored: LatencyDistribution = field(default_factory=LatencyDistribution)
    ts_to_stored: LatencyDistribution = field(default_factory=LatencyDistribution)

    def record(self, f: FileWritten) -> None:
        self.files += 1
        self.readings += f.readings
        self.bytes += f.bytes
        self.received_to_stored = self.received_to_stored.merge(f.received_to_stored)
        self.ts_to_stored = self.ts_to_stored.merge(f.ts_to_stored)

    def merge(self, other: WorkerStats) -> None:
        self.files += other.files
        self.readings += other.readings
        self.bytes += other.bytes
        self.received_to_stored = self.received_to_stored.merge(other.received_to_stored)
        self.ts_to_stored = self.ts_to_stored.merge(other.ts_to_stored)


class Worker:
    """Runs a DrainBatches use case until `stop` is set.

    On stop it flushes its open batches (deleting what it stored) and returns. Faults of the
    queue or the lake are retried with exponential backoff; one log line per fault episode.
    """

    def __init__(
        self,
        drain: DrainBatches,
        stop: threading.Event | None = None,
        *,
        poll_wait: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.drain = drain
        self.stop = stop or threading.Event()
        self.poll_wait = poll_wait
        self.max_backoff = max_backoff
        self.stats = WorkerStats()
        self._fault: str | None = None

    def _written(self, files: list[FileWritten]) -> None:
        for f in files:
            self.stats.record(f)
            event(
                log,
                "file_written",
                key=f.key,
                readings=f.readings,
                bytes=f.bytes,
                messages=f.messages,
                received_to_stored=f.received_to_stored.summary(),
                ts_to_stored=f.ts_to_stored.summary(),
            )

    def _step(self, once: bool) -> bool:
        """One poll; returns False when `once` and the queue answered empty."""
        result = self.drain.poll(0.0 if once else self.poll_wait)
        for mid, why in result.poison:
            event(log, "poison_message", logging.WARNING, message_id=mid, reason=why)
        self._written(result.files)
        return not (once and result.received == 0)

    def run(self, *, once: bool = False) -> WorkerStats:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                more = self._step(once)
            except (QueueUnavailable, StorageUnavailable, OSError) as exc:
                if self._fault is None:
                    event(log, "fault", logging.ERROR, error=str(exc), retry_in_s=backoff)
                self._fault = str(exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._fault is not None:
                event(log, "recovered", after=self._fault)
                self._fault = None
                backoff = 0.5
            if not more:
                break
        self._flush_remaining()
        return self.stats

    def _flush_remaining(self) -> None:
        try:
            self._written(self.drain.flush_all())
        except (QueueUnavailable, StorageUnavailable, OSError) as exc:
            # Not deleted, so the messages come back to the next worker.
            event(log, "final_flush_failed", logging.ERROR, error=str(exc))


