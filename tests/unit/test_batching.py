"""The batching policy: one open batch per hour, flushed for size, age, eviction or shutdown."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from telemetry.domain.batching import Batch, Batcher, BatchPolicy
from telemetry.domain.packing import Envelope

_receipts = itertools.count()


def part(hour: int, readings: int = 1, nbytes: int = 10) -> Envelope:
    return Envelope(
        hour=hour,
        payload=b"x" * nbytes,
        readings=readings,
        received_at_ms=0,
        ts_ms=[hour * 1000] * readings,
        receipt=f"r{next(_receipts)}",
    )


def receipts(batches: list[Batch]) -> list[str]:
    return [r for b in batches for r in b.receipts]


# ---------------------------------------------------------------- examples


def test_policy_rejects_nonsense() -> None:
    for bad in (
        {"max_readings": 0},
        {"max_bytes": 0},
        {"max_open_hours": 0},
        {"max_age_seconds": -1.0},
    ):
        with pytest.raises(ValueError):
            BatchPolicy(**bad)  # type: ignore[arg-type]


def test_flush_when_max_readings_is_reached() -> None:
    b = Batcher(BatchPolicy(max_readings=5))
    assert b.add(part(0, readings=2), 0.0) == []
    assert b.add(part(0, readings=2), 0.0) == []
    (full,) = b.add(part(0, readings=1), 0.0)
    assert full.readings == 5
    assert len(full.envelopes) == 3
    assert b.open_batches == []


def test_flush_when_max_bytes_is_reached() -> None:
    b = Batcher(BatchPolicy(max_bytes=100))
    assert b.add(part(0, nbytes=60), 0.0) == []
    (full,) = b.add(part(0, nbytes=60), 0.0)
    assert full.nbytes == 120


def test_due_only_once_max_age_old() -> None:
    b = Batcher(BatchPolicy(max_age_seconds=5.0))
    b.add(part(0), 100.0)
    b.add(part(1), 102.0)
    assert b.next_deadline() == 105.0
    assert b.due(104.999) == []
    (old,) = b.due(105.0)
    assert old.hour == 0
    assert old.opened_at == 100.0
    assert [x.hour for x in b.open_batches] == [1]
    assert b.next_deadline() == 107.0


def test_age_counts_from_the_first_part() -> None:
    b = Batcher(BatchPolicy(max_age_seconds=5.0))
    b.add(part(0), 0.0)
    b.add(part(0), 4.0)
    (batch,) = b.due(5.0)
    assert len(batch.envelopes) == 2


def test_the_batch_opened_earliest_is_evicted_for_a_new_hour() -> None:
    b = Batcher(BatchPolicy(max_open_hours=2))
    b.add(part(7), 0.0)  # opened first, though its hour is the latest
    b.add(part(3), 1.0)
    b.add(part(7), 2.0)  # adding to an open batch does not reopen it
    (evicted,) = b.add(part(5), 3.0)
    assert evicted.hour == 7
    assert len(evicted.envelopes) == 2
    assert sorted(x.hour for x in b.open_batches) == [3, 5]


def test_drain_returns_everything_once() -> None:
    b = Batcher(BatchPolicy())
    parts = [part(h) for h in (0, 1, 0, 2)]
    for p in parts:
        assert b.add(p, 0.0) == []
    assert b.open_readings == 4
    drained = b.take_all()
    assert sorted(receipts(drained)) == sorted(p.receipt for p in parts)
    assert b.take_all() == []
    assert b.next_deadline() is None
    assert b.open_readings == 0


# ---------------------------------------------------------------- stateful property


class BatcherMachine(RuleBasedStateMachine):
    """Random adds, clock steps, `due` and `drain` calls against the documented policy.

    The machine keeps only what it observed: which hours it saw opened, in which order and
    when, and every receipt it added or got back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.added: list[str] = []
        self.flushed: list[str] = []
        self.opened: dict[int, float] = {}  # hour -> opened_at, in opening order

    @initialize(
        max_readings=st.integers(1, 12),
        max_bytes=st.integers(1, 600),
        max_age=st.sampled_from([0.0, 0.5, 1.0, 5.0]),
        max_open=st.integers(1, 4),
    )
    def setup(self, max_readings: int, max_bytes: int, max_age: float, max_open: int) -> None:
        self.policy = BatchPolicy(max_readings, max_bytes, max_age, max_open)
        self.batcher = Batcher(self.policy)

    def _flushed(self, batches: list[Batch]) -> None:
        for b in batches:
            assert b.envelopes, "an empty batch was flushed"
            assert {p.hour for p in b.envelopes} == {b.hour}, "a batch mixes hours"
            assert b.readings == sum(p.readings for p in b.envelopes)
            assert b.nbytes == sum(len(p.payload) for p in b.envelopes)
            assert b.opened_at == self.opened.pop(b.hour), "flushed a batch that was not open"
            self.flushed.extend(b.receipts)

    @rule(
        hour=st.integers(0, 5),
        readings=st.integers(1, 6),
        nbytes=st.integers(0, 300),
    )
    def add(self, hour: int, readings: int, nbytes: int) -> None:
        p = part(hour, readings, nbytes)
        was_open = list(self.opened)
        out = self.batcher.add(p, self.now)
        self.added.append(p.receipt)
        if hour not in self.opened:
            self.opened[hour] = self.now

        evicted = [b for b in out if p.receipt not in b.receipts]
        mine = [b for b in out if p.receipt in b.receipts]
        if hour not in was_open and len(was_open) >= self.policy.max_open_hours:
            # a new hour at the bound: exactly the batch opened earliest goes first
            assert [b.hour for b in evicted] == [was_open[0]]
            assert out[0] is evicted[0]
        else:
            assert evicted == []
        if mine:
            (full,) = mine
            assert out[-1] is full
            # flushed for size: the limit is reached, and only with this last part
            assert full.envelopes[-1] is p
            assert full.readings >= self.policy.max_readings or full.nbytes >= self.policy.max_bytes
            assert full.readings - p.readings < self.policy.max_readings
            assert full.nbytes - len(p.payload) < self.policy.max_bytes
        else:
            still = next(b for b in self.batcher.open_batches if b.hour == hour)
            assert still.readings < self.policy.max_readings
            assert still.nbytes < self.policy.max_bytes
        self._flushed(out)

    @rule(dt=st.one_of(st.just(0.0), st.sampled_from([0.5, 1.0, 5.0]), st.floats(0, 12)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def due(self) -> None:
        out = self.batcher.due(self.now)
        for b in out:
            assert self.now - b.opened_at >= self.policy.max_age_seconds
        self._flushed(out)
        for b in self.batcher.open_batches:  # and nothing that was due stays behind
            assert self.now - b.opened_at < self.policy.max_age_seconds

    # a shutdown now and then, not every few steps, so that batches grow to their bounds
    @precondition(lambda self: len(self.added) % 7 == 6)
    @rule()
    def drain(self) -> None:
        out = self.batcher.take_all()
        assert sorted(b.hour for b in out) == sorted(self.opened)
        self._flushed(out)
        assert self.batcher.open_batches == []

    @invariant()
    def nothing_lost_nothing_duplicated(self) -> None:
        if not hasattr(self, "batcher"):
            return
        still_open = receipts(self.batcher.open_batches)
        assert Counter(self.flushed + still_open) == Counter(self.added)
        assert len(set(self.added)) == len(self.added)

    @invariant()
    def open_batches_are_bounded_and_one_per_hour(self) -> None:
        if not hasattr(self, "batcher"):
            return
        open_ = self.batcher.open_batches
        assert len(open_) <= self.policy.max_open_hours
        assert [b.hour for b in open_] == list(self.opened)  # one per hour, in opening order
        for b in open_:
            assert {p.hour for p in b.envelopes} == {b.hour}
            assert b.opened_at == self.opened[b.hour]
        assert self.batcher.open_readings == sum(b.readings for b in open_)
        expected_deadline = (
            min(self.opened.values()) + self.policy.max_age_seconds if self.opened else None
        )
        assert self.batcher.next_deadline() == expected_deadline

    def teardown(self) -> None:
        if hasattr(self, "batcher"):
            self._flushed(self.batcher.take_all())
            assert Counter(self.flushed) == Counter(self.added)


TestBatcherMachine = BatcherMachine.TestCase
TestBatcherMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- sequence-driven property

steps = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 4), st.floats(0, 3)),  # hour, readings, dt
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(steps, st.integers(1, 10), st.integers(1, 3), st.sampled_from([0.0, 1.0, 2.5]))
def test_a_worker_loop_loses_nothing_and_respects_every_bound(
    seq: list[tuple[int, int, float]], max_readings: int, max_open: int, max_age: float
) -> None:
    """What the worker does: add each part, then flush what is due; at the end, drain."""
    policy = BatchPolicy(
        max_readings=max_readings, max_age_seconds=max_age, max_open_hours=max_open
    )
    b = Batcher(policy)
    now = 0.0
    sent: list[str] = []
    out: list[Batch] = []
    for hour, readings, dt in seq:
        now += dt
        p = part(hour, readings)
        sent.append(p.receipt)
        out += b.add(p, now)
        due = b.due(now)
        assert all(now - x.opened_at >= max_age for x in due)
        out += due
        assert len(b.open_batches) <= max_open
    out += b.take_all()
    assert sorted(receipts(out)) == sorted(sent)
    for batch in out:
        assert {p.hour for p in batch.envelopes} == {batch.hour}
        # a batch holds no part beyond the one that reached the readings limit
        assert batch.readings - batch.envelopes[-1].readings < max_readings
