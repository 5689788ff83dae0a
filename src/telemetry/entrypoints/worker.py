"""The drain loop: poll, write files, log each one; back off on faults; stop gracefully."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from telemetry.adapters.clock import SystemClock
from telemetry.domain.drain import DrainBatches, FileWritten, PollResult
from telemetry.domain.errors import QueueUnavailable, StorageUnavailable
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.ports.clock import Clock
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


class WorkerObserver(Protocol):
    """Told what the worker does, on the worker's thread: metrics, the published state."""

    def polled(self, result: PollResult) -> None: ...

    def stored(self, files: Sequence[FileWritten]) -> None: ...

    def faulted(self, new_episode: bool) -> None:
        """A fault; retried after a backoff. `new_episode` for the first of a run of them."""
        ...

    def idle(self) -> None:
        """Between polls: periodic work, kept short."""
        ...

    def stopped(self) -> None: ...


FAULTS = (QueueUnavailable, StorageUnavailable, OSError)
MIN_BACKOFF = 0.5
# Time kept before the shutdown deadline to give back what could not be stored.
_GIVE_UP_MARGIN = 0.5


class Worker:
    """Runs a DrainBatches use case until `stop` is set.

    Faults of the queue or the lake are retried with exponential backoff, during which the
    messages held stay invisible; one log line per fault episode, one when it is over.

    On stop it flushes what it holds (deleting what it stored) until the shutdown deadline:
    `deadline_at` (monotonic) when the signal handler set it, else `shutdown_deadline` seconds
    after the loop noticed the stop. Past it, it gives back what it could not store and
    `clean` stays False.
    """

    def __init__(
        self,
        use_case: DrainBatches,
        stop: threading.Event | None = None,
        *,
        clock: Clock | None = None,
        poll_wait: float = 1.0,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = 30.0,
        shutdown_deadline: float = 25.0,
        observers: Sequence[WorkerObserver] = (),
    ) -> None:
        self.use_case = use_case
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.stop = stop or threading.Event()
        self.poll_wait = poll_wait
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.shutdown_deadline = shutdown_deadline
        self.deadline_at: float | None = None
        self.clean = False  # everything held was stored and deleted when run returned
        self.stats = WorkerStats()
        self._fault: str | None = None
        self.observers = list(observers)

    def request_stop(self, within_s: float) -> None:
        """Stop, flushing what is held for at most `within_s` seconds from now."""
        self.deadline_at = self._now() + within_s
        self.stop.set()

    def _now(self) -> float:
        return self._clock.monotonic()

    def _written(self, files: list[FileWritten]) -> None:
        for o in self.observers:
            o.stored(files)
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
        for p in self.use_case.partials_log:
            if p.error is None:
                event(log, "partials_written", key=p.key, files=p.files)
            else:  # no reading is lost: aggregation decodes these files instead
                event(log, "partials_dropped", logging.WARNING, key=p.key, files=p.files,
                      error=p.error)
        self.use_case.partials_log.clear()

    def _step(self, once: bool) -> bool:
        """One poll; returns False when `once` and the queue answered empty."""
        result = self.use_case.poll(0.0 if once else self.poll_wait)
        self._recovered()
        for o in self.observers:
            o.polled(result)
        for mid, why in result.poison:
            event(log, "poison_message", logging.WARNING, message_id=mid, reason=why)
        self._written(result.files)
        for o in self.observers:
            o.idle()
        return not (once and result.received == 0)

    def _faulted(self, exc: Exception, retry_in: float) -> None:
        for o in self.observers:
            o.faulted(self._fault is None)
        if self._fault is None:
            event(log, "fault", logging.ERROR, error=str(exc), retry_in_s=retry_in,
                  held_batches=len(self.use_case.held))
        self._fault = str(exc)

    def _recovered(self) -> None:
        if self._fault is not None:
            event(log, "recovered", after=self._fault)
            self._fault = None

    def run(self, *, once: bool = False) -> WorkerStats:
        backoff = self.min_backoff
        while not self.stop.is_set():
            try:
                more = self._step(once)
            except FAULTS as exc:
                self._faulted(exc, backoff)
                self._back_off(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.min_backoff
            if not more:
                break
        self._shutdown()
        for o in self.observers:
            o.stopped()
        return self.stats

    def _back_off(self, seconds: float) -> None:
        """Wait `seconds` (less if stopped), extending the visibility of what is held when it
        falls due, so a long outage never hands the held messages to another worker."""
        until = self._now() + seconds
        retry_hold_at = 0.0
        while not self.stop.is_set():
            now = self._now()
            if now >= until:
                return
            due = self.use_case.next_hold()
            if due is not None and now >= max(due, retry_hold_at):
                try:
                    self.use_case.hold()
                    retry_hold_at = now + 0.05  # a tiny visibility timeout must not spin here
                except FAULTS:
                    retry_hold_at = now + self.min_backoff  # the queue is down too
                continue
            wake = until if due is None else min(until, max(due, retry_hold_at))
            self.stop.wait(max(0.01, wake - now))

    def _shutdown(self) -> None:
        """Flush what is held until the deadline; past it, give the rest back."""
        deadline = self.deadline_at
        if deadline is None:
            deadline = self._now() + self.shutdown_deadline
        backoff = self.min_backoff
        while True:
            try:
                files = self.use_case.flush_all()
            except FAULTS as exc:
                self._faulted(exc, backoff)
                # Room is left for the give-up below before the signal handler's hard stop.
                left = deadline - self._now() - _GIVE_UP_MARGIN
                if left > 0:
                    time.sleep(min(backoff, left))
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                self._give_up(exc)
                return
            self._recovered()
            self._written(files)
            self.clean = True
            return

    def _give_up(self, exc: Exception) -> None:
        # Not deleted, so the messages come back; released, they come back at once.
        held = sum(len(b.envelopes) for b in self.use_case.held)
        try:
            released = self.use_case.release()
        except FAULTS:
            released = 0
        event(log, "final_flush_failed", logging.ERROR, error=str(exc), held_messages=held,
              released_messages=released)
