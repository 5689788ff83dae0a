"""The worker's recent history, published to the lake for `telemetry triggers` and reports
(`telemetry.domain.worker_state`): an observer of the drain loop."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Sequence

from telemetry.adapters.clock import SystemClock
from telemetry.domain.drain import FileWritten, PollResult
from telemetry.domain.errors import StorageUnavailable
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.storage import Storage
from telemetry.domain.worker_state import WorkerState, state_key, worker_name
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry.worker")


def slot_seconds(window_s: float) -> float:
    """180 slots to a trigger window (5 s by default), none under a second."""
    return max(1.0, window_s / 180)


class StatePublisher:
    """Keeps `window_s` of slots and writes them every `every` seconds and at the stop. Best
    effort: a failed write is logged once per run of failures and tried again later."""

    def __init__(self, storage: Storage, *, window_s: float, every: float,
                 name: str | None = None, clock: Clock | None = None) -> None:
        self.storage = storage
        self.every = every
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.state = WorkerState(name or worker_name(socket.gethostname(), os.getpid(),
                                                     secrets.token_hex(3)),
                                 slot_seconds(window_s), window_s + slot_seconds(window_s))
        self.key = state_key(self.state.worker)
        # The first publication waits a full interval: at start there is nothing to tell, and
        # the first file a worker writes stays its first raw file.
        self._published_at = self._time()
        self._failing = False

    def _time(self) -> float:
        """Epoch seconds: the slots are wall-clock time, read by other processes."""
        return self._clock.now().timestamp()

    def polled(self, result: PollResult) -> None:
        self.state.received(self._time(), result.received, result.first_receives,
                            result.oldest_age_ms)

    def stored(self, files: Sequence[FileWritten]) -> None:
        now = self._time()
        for f in files:
            self.state.stored(now, f.readings, f.bytes, f.received_to_stored, f.ts_to_stored)

    def faulted(self, new_episode: bool) -> None:
        pass

    def idle(self) -> None:
        now = self._time()
        if now - self._published_at >= self.every:
            self.publish()

    def stopped(self) -> None:
        self.publish()

    def publish(self) -> None:
        now = self._time()
        self._published_at = now
        try:
            self.storage.put(self.key, self.state.encode(now))
        except (StorageUnavailable, OSError) as exc:
            if not self._failing:
                event(log, "worker_state_not_published", logging.WARNING, key=self.key,
                      error=str(exc))
            self._failing = True
            return
        self._failing = False
