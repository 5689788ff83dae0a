"""Any interleaving of queue operations, checked step by step against a small model.

Hypothesis drives send, receive, delete (current and stale receipts), change_visibility, time
passing, consumer crashes (receipts forgotten) and redrive against each queue adapter with a
fake clock, and a model that knows, for every message, its receive count, when it becomes
visible and its current receipt. After every step:

- a receive returns only messages the model says are visible and live, as many as asked for
  (or all there are), each with the model's receive count + 1;
- only messages received max_receives times reach the dead-letter queue, and once a receive
  has come back short of what it asked for, every such visible message is there;
- a delete removes a message only with its current receipt;
- a drain at any point gets back every message neither deleted nor dead-lettered: nothing is
  lost.

Time moves in whole seconds: the fake clock's epoch floats are then exact, so the model and
the adapter agree even on ties (a message is visible when visible_at <= now).
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

from telemetry.domain.ports import Message
from tests.contract.conftest import QUEUE_ADAPTERS, QueueHarness, QueueSpec

VISIBILITY = 10
MAX_RECEIVES = 2  # low, so that runs of a few steps reach the dead-letter queue


@dataclass
class Tracked:
    """The model of one message not yet deleted."""

    visible_at: int
    receive_count: int = 0
    receipt: str | None = None
    message_id: str | None = None
    dead: bool = False


def _scratch_dir() -> Path:
    # tmpfs when there is one: this suite is about semantics, and fsync there costs nothing.
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="queue-stateful-", dir=base))


class QueueMachine(RuleBasedStateMachine):
    adapter = ""

    def __init__(self) -> None:
        super().__init__()
        self._dir = _scratch_dir()
        self._stack = contextlib.ExitStack()
        spec = QueueSpec(self._dir, visibility_timeout=VISIBILITY, max_receives=MAX_RECEIVES,
                         max_message_bytes=4096)
        self.h: QueueHarness = self._stack.enter_context(QUEUE_ADAPTERS[self.adapter](spec))
        self.now = 0
        self.sent = 0
        self.live: dict[bytes, Tracked] = {}  # sent, not deleted (dead letters included)
        self.deleted: set[bytes] = set()
        self.held: dict[bytes, str] = {}  # receipts the consumer holds, by body
        self.stale: list[str] = []  # receipts superseded by a later receive or a redrive

    def teardown(self) -> None:
        self._stack.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -------------------------------------------------------------- model helpers

    def _visible(self) -> dict[bytes, Tracked]:
        return {b: t for b, t in self.live.items() if not t.dead and t.visible_at <= self.now}

    def _receive_and_check(self, max_messages: int) -> list[Message]:
        visible = self._visible()
        due = {b for b, t in visible.items() if t.receive_count >= MAX_RECEIVES}
        takeable = {b for b in visible if b not in due}
        got = self.h.queue.receive(max_messages)
        assert len(got) == min(max_messages, len(takeable))
        assert len({m.body for m in got}) == len(got)
        for m in got:
            assert m.body in takeable, "handed out a message that is invisible, dead or gone"
            t = self.live[m.body]
            assert m.receive_count == t.receive_count + 1
            if t.message_id is not None:
                assert m.message_id == t.message_id
            if t.receipt is not None:
                self.stale.append(t.receipt)
            t.message_id, t.receipt = m.message_id, m.receipt
            t.receive_count += 1
            t.visible_at = self.now + VISIBILITY
            self.held[m.body] = m.receipt
        dead_now = {m.body for m in self.h.queue.dead_letters(10_000)}
        before = {b for b, t in self.live.items() if t.dead}
        assert before <= dead_now, "a dead letter left the dead-letter queue"
        assert dead_now - before <= due, "dead-lettered a message below max receives"
        if len(got) < max_messages:
            assert due <= dead_now, "a receive that came back short left a due message"
        for b in dead_now - before:
            self.live[b].dead = True
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
            self.live[b] = Tracked(visible_at=self.now)

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
        self.h.queue.delete(receipts)  # the model does not change: stale receipts do nothing

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), timeout=st.sampled_from([0, 3 * VISIBILITY]))
    def change_visibility_stale(self, data: st.DataObject, timeout: int) -> None:
        receipts = data.draw(st.lists(st.sampled_from(self.stale), min_size=1, max_size=4))
        self.h.queue.change_visibility(receipts, timeout)  # nor here

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), timeout=st.sampled_from([0, 3, VISIBILITY, 3 * VISIBILITY]))
    def change_visibility(self, data: st.DataObject, timeout: int) -> None:
        bodies = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1,
                                    unique=True))
        receipts = [self.held[b] for b in bodies]
        self.h.queue.change_visibility(receipts, timeout)
        for b, r in zip(bodies, receipts, strict=True):
            t = self.live.get(b)
            if t is not None and not t.dead and t.receipt == r:
                t.visible_at = self.now + timeout

    @rule(seconds=st.integers(1, 2 * VISIBILITY))
    def advance(self, seconds: int) -> None:
        self.h.advance(seconds)
        self.now += seconds

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
                self.stale.append(t.receipt)
            # A redriven message is a new message to the consumer; its id may change.
            self.live[b] = Tracked(visible_at=self.now)

    @rule()
    def drain_everything(self) -> None:
        """Wait until everything in flight is visible again and take it all: the bodies that
        come back are exactly those neither deleted nor dead-lettered."""
        latest = max((t.visible_at for t in self.live.values()), default=self.now)
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
        assert len(self.live) + len(self.deleted) == self.sent
        assert not set(self.live) & self.deleted


@pytest.mark.parametrize("adapter", sorted(QUEUE_ADAPTERS))
def test_any_interleaving_loses_nothing(adapter: str, tmp_path: Path) -> None:
    with QUEUE_ADAPTERS[adapter](QueueSpec(tmp_path)) as probe:
        if not probe.fake_clock:
            pytest.skip("runs on the real clock: time would have to pass for real")
    machine = type(f"QueueMachine_{adapter}", (QueueMachine,), {"adapter": adapter})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
