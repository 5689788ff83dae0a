"""Any interleaving of queue operations, checked step by step against a small model.

Hypothesis drives send, receive, delete (current and stale receipts), change_visibility, time
passing, consumer crashes (receipts forgotten) and redrive against each queue adapter with a
clock that costs nothing to move, and a model that knows, for every message, its receive
count, when it becomes visible and its current receipt. After every step:

- a receive returns only messages the model says are visible and live, as many as asked for
  (or all there are), each with the model's receive count + 1;
- only messages received max_receives times reach the dead-letter queue, and once a receive
  has come back short of what it asked for, every such visible message is there;
- a delete removes a message only with its current receipt;
- a drain at any point gets back every message neither deleted nor dead-lettered: nothing is
  lost.

Stale receipts: where the port forbids them to act (memory, SQLite), the model is exact. SQS
may honour one (quirks STALE_RECEIPT_DELETES, STALE_RECEIPT_VISIBILITY; moto always does), so
there the model keeps what it cannot know as a set of possibilities, narrowed by what later
receives show: a stale delete leaves the message *maybe gone*, a stale change_visibility adds
a possible `visible_at`. A receive that returns the message proves it there (at a visible
time); a receive that comes back short without it rules out every time it would have been
visible at, and a maybe-gone message with no such time left was deleted by the stale receipt
(`stale_deleted`). Nothing else may disappear: a message that is surely there and visible
must come back, so losses are still caught.

Time moves in whole ticks: the fake clock's epoch floats are then exact, so the model and the
adapter agree even on ties (a message is visible when visible_at <= now). moto's clock is the
real one shifted (`clock_runs`): it also runs between calls, by far less than a tick of
SQS_TICK seconds in a run, so ties come out the same way there (moto wants now > visible_at,
which the real time elapsed makes true).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from telemetry.domain.ports.consuming import Message
from tests.contract.conftest import (
    QUEUE_ADAPTERS,
    STALE_RECEIPT_DELETES,
    STALE_RECEIPT_VISIBILITY,
    QueueHarness,
    QueueSpec,
)

VISIBILITY = 10  # ticks
MAX_RECEIVES = 2  # low, so that runs of a few steps reach the dead-letter queue
# Seconds per tick where the queue's clock runs with real time (SQS in moto): far longer than
# a run takes for real, and short enough that a run stays under SQS's 12 hours of visibility
# after a send (a step moves time at most 31 ticks: 30 steps * 31 * 20 s = 18,600 s).
SQS_TICK = 20
FAKE_CLOCK = settings(max_examples=60, stateful_step_count=40)
# Each step is a few calls into moto: fewer, shorter runs keep both SQS cases under ~60 s.
RUNNING_CLOCK = settings(max_examples=25, stateful_step_count=30)


@dataclass
class Tracked:
    """The model of one message not yet deleted."""

    visible_at: set[int]  # when it becomes visible: one time, unless a stale receipt moved it
    receive_count: int = 0
    receipt: str | None = None
    message_id: str | None = None
    dead: bool = False
    maybe_gone: bool = False  # a stale receipt may have deleted it

    def surely_visible(self, now: int) -> bool:
        return not self.maybe_gone and max(self.visible_at) <= now

    def maybe_visible(self, now: int) -> bool:
        return min(self.visible_at) <= now


def _scratch_dir() -> Path:
    # tmpfs when there is one: this suite is about semantics, and fsync there costs nothing.
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="queue-stateful-", dir=base))


class QueueMachine(RuleBasedStateMachine):
    adapter = ""
    tick = 1  # seconds of the queue's time per tick of the model's

    def __init__(self) -> None:
        super().__init__()
        self._dir = _scratch_dir()
        self._stack = contextlib.ExitStack()
        spec = QueueSpec(self._dir, visibility_timeout=VISIBILITY * self.tick,
                         max_receives=MAX_RECEIVES, max_message_bytes=4096)
        self.h: QueueHarness = self._stack.enter_context(QUEUE_ADAPTERS[self.adapter](spec))
        self.stale_deletes = STALE_RECEIPT_DELETES in self.h.quirks
        self.stale_visibility = STALE_RECEIPT_VISIBILITY in self.h.quirks
        self.now = 0
        self.sent = 0
        self.live: dict[bytes, Tracked] = {}  # sent, not deleted (dead letters included)
        self.deleted: set[bytes] = set()
        self.stale_deleted: set[bytes] = set()  # seen to be gone after a stale delete
        self.held: dict[bytes, str] = {}  # receipts the consumer holds, by body
        self.stale: list[str] = []  # receipts superseded by a later receive or a redrive
        # Whose each stale receipt was: a redriven message is a new Tracked, out of its reach.
        self.stale_of: dict[str, tuple[bytes, Tracked]] = {}

    def teardown(self) -> None:
        self._stack.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -------------------------------------------------------------- model helpers

    def _retire(self, receipt: str, body: bytes, t: Tracked) -> None:
        self.stale.append(receipt)
        self.stale_of[receipt] = (body, t)

    def _stale_targets(self, receipts: list[str]) -> list[Tracked]:
        """The messages, still in the queue, that these stale receipts were once for."""
        out = []
        for r in receipts:
            body, t = self.stale_of[r]
            if self.live.get(body) is t and not t.dead:
                out.append(t)
        return out

    def _receive_and_check(self, max_messages: int) -> list[Message]:
        now = self.now
        waiting = {b: t for b, t in self.live.items() if not t.dead and t.maybe_visible(now)}
        due = {b for b, t in waiting.items() if t.receive_count >= MAX_RECEIVES}
        takeable = {b for b in waiting if b not in due}
        surely = {b for b, t in waiting.items() if t.surely_visible(now)}
        got = self.h.queue.receive(max_messages)
        got_bodies = {m.body for m in got}
        assert len(got_bodies) == len(got)
        assert len(got) >= min(max_messages, len(takeable & surely)), "came back short"
        assert len(got) <= min(max_messages, len(takeable))
        for m in got:
            assert m.body in takeable, "handed out a message that is invisible, dead or gone"
            t = self.live[m.body]
            assert m.receive_count == t.receive_count + 1
            if t.message_id is not None:
                assert m.message_id == t.message_id
            if t.receipt is not None:
                self._retire(t.receipt, m.body, t)
            t.message_id, t.receipt = m.message_id, m.receipt
            t.receive_count += 1
            t.visible_at = {now + VISIBILITY}
            t.maybe_gone = False
            self.held[m.body] = m.receipt
        dead_now = {m.body for m in self.h.queue.dead_letters(10_000)}
        before = {b for b, t in self.live.items() if t.dead}
        assert before <= dead_now, "a dead letter left the dead-letter queue"
        assert dead_now - before <= due, "dead-lettered a message below max receives"
        for b in dead_now - before:
            t = self.live[b]
            t.dead, t.maybe_gone = True, False
            self.held.pop(b, None)
        if len(got) < max_messages:
            # Everything there and visible was handed out or dead-lettered: what was not, was
            # not visible, or (after a stale delete) is gone.
            assert takeable & surely <= got_bodies, "a receive that came back short left one"
            assert due & surely <= dead_now, "a receive that came back short left a due message"
            for b in (takeable - got_bodies) | (due - dead_now):
                t = self.live[b]
                t.visible_at = {v for v in t.visible_at if v > now}
                if not t.visible_at:
                    assert t.maybe_gone
                    del self.live[b]
                    self.stale_deleted.add(b)
                    self.held.pop(b, None)
        return got

    # -------------------------------------------------------------- rules

    @initialize(n=st.integers(1, 6))
    def start_with_some(self, n: int) -> None:
        self.send(n)

    @rule(n=st.integers(1, 6))
    def send(self, n: int) -> None:
        bodies = [f'{{"n": {self.sent + i}}}'.encode() for i in range(n)]
        self.sent += n
        self.h.queue.send(bodies)
        for b in bodies:
            self.live[b] = Tracked(visible_at={self.now})

    @rule(max_messages=st.integers(1, 8))
    def receive(self, max_messages: int) -> None:
        self._receive_and_check(max_messages)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def delete_some(self, data: st.DataObject) -> None:
        bodies = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1,
                                    unique=True))
        receipts = [self.held.pop(b) for b in bodies]
        self.h.queue.delete(receipts)
        for b, r in zip(bodies, receipts, strict=True):
            t = self.live.get(b)
            if t is not None and not t.dead and t.receipt == r:
                del self.live[b]
                self.deleted.add(b)

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data())
    def delete_stale(self, data: st.DataObject) -> None:
        receipts = data.draw(st.lists(st.sampled_from(self.stale), min_size=1, max_size=4))
        self.h.queue.delete(receipts)
        if self.stale_deletes:  # "succeeds, but the message might not be deleted"
            for t in self._stale_targets(receipts):
                t.maybe_gone = True
        # else the model does not change: stale receipts do nothing

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), timeout=st.sampled_from([0, 3 * VISIBILITY]))
    def change_visibility_stale(self, data: st.DataObject, timeout: int) -> None:
        receipts = data.draw(st.lists(st.sampled_from(self.stale), min_size=1, max_size=4))
        self.h.queue.change_visibility(receipts, timeout * self.tick)
        if self.stale_visibility:  # the new timeout, or the old one
            for t in self._stale_targets(receipts):
                t.visible_at.add(self.now + timeout)
        # else nor here

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), timeout=st.sampled_from([0, 3, VISIBILITY, 3 * VISIBILITY]))
    def change_visibility(self, data: st.DataObject, timeout: int) -> None:
        bodies = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1,
                                    unique=True))
        receipts = [self.held[b] for b in bodies]
        self.h.queue.change_visibility(receipts, timeout * self.tick)
        for b, r in zip(bodies, receipts, strict=True):
            t = self.live.get(b)
            if t is not None and not t.dead and t.receipt == r:
                t.visible_at = {self.now + timeout}

    @rule(ticks=st.integers(1, 2 * VISIBILITY))
    def advance(self, ticks: int) -> None:
        self.h.advance(ticks * self.tick)
        self.now += ticks

    @precondition(lambda self: bool(self.held))
    @rule()
    def consumer_crashes(self) -> None:
        self.held.clear()  # forgotten, not stale: nobody will delete them now

    @rule(max_messages=st.integers(1, 8))
    def receive_then_crash(self, max_messages: int) -> None:
        """A consumer that takes messages and dies: they come back after the timeout. The
        quickest way to poison messages, so that runs reach the dead-letter queue."""
        for m in self._receive_and_check(max_messages):
            self.held.pop(m.body, None)
        self.advance(VISIBILITY)

    @rule()
    def redrive(self) -> None:
        dead = [b for b, t in self.live.items() if t.dead]
        assert self.h.queue.redrive() == len(dead)
        for b in dead:
            t = self.live[b]
            if t.receipt is not None:
                self._retire(t.receipt, b, t)
            # A redriven message is a new message to the consumer; its id may change.
            self.live[b] = Tracked(visible_at={self.now})

    @rule()
    def drain_everything(self) -> None:
        """Wait until everything in flight is visible again and take it all: the bodies that
        come back are exactly those neither deleted nor dead-lettered (nor, where a stale
        receipt may delete, seen gone after one)."""
        latest = max((max(t.visible_at) for t in self.live.values()), default=self.now)
        self.advance(max(1, latest - self.now + 1))
        while got := self._receive_and_check(7):
            self.h.queue.delete([m.receipt for m in got])
            for m in got:
                del self.live[m.body]
                self.deleted.add(m.body)
                self.held.pop(m.body, None)
        assert all(t.dead for t in self.live.values()), "a live message did not come back"

    # -------------------------------------------------------------- invariants

    @invariant()
    def dead_letters_match_the_model(self) -> None:
        dead = self.h.queue.dead_letters(10_000)
        assert {m.body for m in dead} == {b for b, t in self.live.items() if t.dead}
        assert all(m.receive_count >= MAX_RECEIVES for m in dead)

    @invariant()
    def every_message_is_accounted_for(self) -> None:
        assert len(self.live) + len(self.deleted) + len(self.stale_deleted) == self.sent
        assert not set(self.live) & self.deleted
        assert not (set(self.live) | self.deleted) & self.stale_deleted
        if not self.stale_deletes:
            assert not self.stale_deleted
            assert not any(t.maybe_gone for t in self.live.values())
        if not self.stale_visibility:
            assert all(len(t.visible_at) == 1 for t in self.live.values())


@pytest.mark.parametrize("adapter", sorted(QUEUE_ADAPTERS))
def test_any_interleaving_loses_nothing(adapter: str, tmp_path: Path) -> None:
    with QUEUE_ADAPTERS[adapter](QueueSpec(tmp_path)) as probe:
        if not probe.fake_clock:
            pytest.skip("its time passes only for real (advance sleeps): too slow for this")
        clock_runs = probe.clock_runs
    machine = type(
        f"QueueMachine_{adapter}",
        (QueueMachine,),
        {"adapter": adapter, "tick": SQS_TICK if clock_runs else 1},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            RUNNING_CLOCK if clock_runs else FAKE_CLOCK,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
