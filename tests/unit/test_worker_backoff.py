"""The worker loop backs off on a failing lake: the delays between write attempts double from
min_backoff up to max_backoff, and start again from min_backoff after a recovery. Meanwhile its
messages stay in the queue, invisible; once the lake answers every reading lands.

The real `Worker` over the in-memory adapters, in virtual time: the worker waits out a back-off
through `stop.wait` and reads the time from the drain's clock, so a stop event whose `wait`
moves a FakeClock instead of sleeping makes every delay exact, whatever the machine's load."""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from telemetry.adapters.memory import MemoryQueue
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.entrypoints.worker import Worker
from tests.support.fakes import FakeClock
from tests.unit.test_drain_faults import T0, FlakyStorage, enqueue, stored_ids

MIN, MAX = 0.5, 4.0
VT = 5.0
# Raw-file put attempts that fail: a long outage (7 failures, the delays reach the cap and
# stay there), then after a recovery a short one (2 failures, the delays start from MIN again).
FIRST_OUTAGE = range(1, 8)
SECOND_OUTAGE = range(10, 12)


class VirtualTime(threading.Event):
    """A stop event whose waits move the clock instead of sleeping (the worker's only sleep
    while it runs). Sets itself after an hour of virtual time, so a loop that never ends fails
    the test instead of hanging it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waited = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            assert timeout is not None and timeout > 0
            self.clock.advance(timeout)
            self.waited += timeout
            if self.waited > 3600:
                self.set()
        return self.is_set()


@dataclass
class Attempt:
    at: float  # clock.monotonic()
    ok: bool
    live: list[str]  # ids of the messages in the queue at the attempt
    visible: int  # how many of them another consumer could receive


class TimedStorage(FlakyStorage):
    """FlakyStorage that notes when each raw-file put is tried, and what the queue holds then."""

    def __init__(self, clock: FakeClock, queue: MemoryQueue) -> None:
        super().__init__()
        self.clock, self.queue = clock, queue
        self.raw: list[Attempt] = []

    def put(self, key: str, data: bytes) -> None:
        if not key.startswith("raw/"):
            super().put(key, data)  # partials, at shutdown
            return
        now = self.clock.time()
        live = sorted(self.queue.messages)
        visible = sum(1 for e in self.queue.messages.values() if e.visible_at <= now)
        try:
            super().put(key, data)
        except Exception:
            self.raw.append(Attempt(self.clock.monotonic(), False, live, visible))
            raise
        self.raw.append(Attempt(self.clock.monotonic(), True, live, visible))


class RecordingQueue(MemoryQueue):
    """MemoryQueue that notes when messages are deleted."""

    def __init__(self, clock: FakeClock, **kwargs: object) -> None:
        super().__init__(clock=clock, **kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.deleted_at: list[float] = []

    def delete(self, receipts):  # type: ignore[no-untyped-def]
        super().delete(receipts)
        self.deleted_at.append(self.clock.monotonic())


def test_the_worker_backs_off_exponentially_up_to_the_cap_and_resets_after_recovery(
    caplog,
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=10))
    queue = RecordingQueue(clock, visibility_timeout=VT, max_receives=2)
    ids = enqueue(queue, clock, 3, hour=0) + enqueue(queue, clock, 2, hour=1)
    ids += enqueue(queue, clock, 4, hour=2)  # one message per hour, three messages
    first, second, third = sorted(queue.messages)
    storage = TimedStorage(clock, queue)
    storage.fail_attempts = {*FIRST_OUTAGE, *SECOND_OUTAGE}
    # One message per receive, each written at once: message 1 meets the first outage,
    # message 3 the second.
    drain = DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0), receive_max=1)
    stop = VirtualTime(clock)
    worker = Worker(drain, stop, clock=clock, min_backoff=MIN, max_backoff=MAX)
    with caplog.at_level(logging.INFO, logger="telemetry.worker"):
        worker.run(once=True)
    assert not stop.is_set(), "the worker was still looping after an hour of virtual time"

    attempts = storage.raw
    assert [a.ok for a in attempts] == [
        n not in storage.fail_attempts for n in range(1, len(attempts) + 1)
    ]
    assert len(attempts) == 12
    gaps = [round(b.at - a.at, 6) for a, b in itertools.pairwise(attempts)]
    # Attempts 1-8 retry message 1's file; 9 writes message 2's in the poll that recovered
    # (no wait); 10-12 write message 3's after the recovery line, from MIN again.
    assert gaps[:7] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0], gaps
    assert gaps[7] == 0.0
    assert gaps[8:] == [0.0, 0.5, 1.0], gaps

    # Nothing deleted while the lake failed, and what the worker held stayed invisible
    # (outages of 19.5 s and 1.5 s against a visibility timeout of 5 s).
    for a in attempts[:8]:
        assert a.live == [first, second, third]
        assert a.visible == 2  # message 1 held; 2 and 3 not received yet
    for a in attempts[9:]:
        assert a.live == [third] and a.visible == 0
    ok_times = [a.at for a in attempts if a.ok]
    assert queue.deleted_at == ok_times  # one delete per stored file, at its write

    assert stored_ids(storage) == sorted(ids)
    assert queue.messages == {} and queue.dead == {}
    assert worker.clean

    records = [r for r in caplog.records if r.getMessage() in ("fault", "recovered")]
    assert [r.getMessage() for r in records] == ["fault", "recovered"] * 2
    assert [r.fields["retry_in_s"] for r in records[::2]] == [MIN, MIN]  # type: ignore[attr-defined]
