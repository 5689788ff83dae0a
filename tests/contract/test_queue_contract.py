"""The Queue port's contract (CONTRACT.md section 4), against every adapter in QUEUE_ADAPTERS.

Bodies are UTF-8 text, as the domain's envelopes are (JSON), so a text-only backend passes too.
SQS promises no order and may hand out fewer messages than asked: results are compared as sets,
and `drain` receives until the queue answers empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from telemetry.domain.ports.consuming import Message
from telemetry.domain.ports.depth import QueueDepthProbe
from tests.contract.conftest import STALE_RECEIPT_DELETES, QueueHarness
from tests.support.roles import QUEUE_ROLES, Queue


def texts(n: int, tag: str = "m") -> list[bytes]:
    return [json.dumps({"tag": tag, "n": i, "s": "café 🚗"}).encode() for i in range(n)]


def drain(h: QueueHarness, *, delete: bool = False, max_calls: int = 1000) -> list[Message]:
    out: list[Message] = []
    for _ in range(max_calls):
        got = h.queue.receive(10, h.receive_wait)
        if not got:
            return out
        out.extend(got)
        if delete:
            h.queue.delete([m.receipt for m in got])
    raise AssertionError("the queue never ran dry")


def expire(h: QueueHarness, factor: float = 1.5) -> None:
    """Let the visibility timeout of everything received so far run out."""
    h.advance(h.queue.visibility_timeout * factor)


def bodies_of(messages: list[Message]) -> list[bytes]:
    return sorted(m.body for m in messages)


# ------------------------------------------------------------------ basics


def test_the_adapter_implements_the_port(queue: QueueHarness) -> None:
    assert isinstance(queue.queue, Queue)
    for role in QUEUE_ROLES:
        assert isinstance(queue.queue, role), role.__name__
    assert queue.queue.max_message_bytes > 0
    assert queue.queue.visibility_timeout > 0
    queue.queue.check()


def test_send_receive_delete(queue: QueueHarness) -> None:
    [body] = texts(1)
    queue.queue.send([body])
    [m] = drain(queue)
    assert (m.body, m.receive_count) == (body, 1)
    assert m.message_id and m.receipt
    queue.queue.delete([m.receipt])
    expire(queue)
    assert drain(queue) == []


def test_depth_counts_visible_in_flight_and_dead_messages(queue: QueueHarness) -> None:
    q = queue.queue
    assert isinstance(q, QueueDepthProbe)
    empty = q.depth()
    assert (empty.visible, empty.in_flight) == (0, 0)
    assert empty.oldest_age_s in (0.0, None)  # None: SQS publishes it to CloudWatch only
    q.send(texts(3))
    queue.advance(2)
    [m] = q.receive(1)
    d = q.depth()
    assert (d.visible, d.in_flight) == (2, 1)
    assert d.dead_letters in (0, None)
    if d.oldest_age_s is not None:
        assert d.oldest_age_s >= 2
    q.delete([m.receipt])
    drain(queue, delete=True)
    assert (q.depth().visible, q.depth().in_flight) == (0, 0)


def test_one_send_packs_many_bodies(queue: QueueHarness) -> None:
    sent = texts(120)
    queue.queue.send(sent)
    got = drain(queue, delete=True)
    assert bodies_of(got) == sorted(sent)
    assert len({m.message_id for m in got}) == len(sent)
    assert {m.receive_count for m in got} == {1}


def test_sending_nothing_is_a_no_op(queue: QueueHarness) -> None:
    queue.queue.send([])
    assert queue.queue.receive(10) == []


@pytest.mark.parametrize(
    "body",
    [b'{"v": 1}\n', "caf\u00e9 \U0001f697 \u4e2d\u6587\t\r\n".encode(), b"", b" "],
    ids=["json", "unicode", "empty", "space"],
)
def test_bodies_arrive_byte_for_byte(queue: QueueHarness, body: bytes) -> None:
    queue.queue.send([body])
    [m] = drain(queue)
    assert m.body == body


def test_receive_respects_max_messages(queue: QueueHarness) -> None:
    queue.queue.send(texts(5))
    assert queue.queue.receive(0) == []
    first = queue.queue.receive(2, queue.receive_wait)
    assert len(first) == 2
    rest = drain(queue)
    assert bodies_of(first + rest) == sorted(texts(5))


# ------------------------------------------------------------------ visibility


def test_a_received_message_is_invisible_until_its_timeout(queue: QueueHarness) -> None:
    queue.queue.send(texts(1))
    [first] = drain(queue)
    assert queue.queue.receive(10) == []
    queue.advance(queue.queue.visibility_timeout * 0.5)
    assert queue.queue.receive(10) == []
    queue.advance(queue.queue.visibility_timeout)
    [again] = drain(queue)
    assert again.message_id == first.message_id
    assert again.body == first.body
    assert again.receipt != first.receipt
    assert again.receive_count == first.receive_count + 1


def test_a_stale_receipt_does_not_delete(queue: QueueHarness) -> None:
    if STALE_RECEIPT_DELETES in queue.quirks:
        pytest.skip("this backend honours a stale receipt (allowed by its own docs)")
    queue.queue.send(texts(1))
    [first] = drain(queue)
    expire(queue)
    [second] = drain(queue)
    assert second.receipt != first.receipt
    queue.queue.delete([first.receipt])  # the consumer that timed out, finishing late
    expire(queue)
    [third] = drain(queue)  # still there
    assert third.message_id == first.message_id
    assert third.receive_count == 3
    queue.queue.delete([third.receipt])
    expire(queue)
    assert drain(queue) == []


def test_unknown_receipts_are_ignored(queue: QueueHarness) -> None:
    queue.queue.send(texts(1))
    [m] = drain(queue)
    bogus = ["nope", "1:0000", "999999:abc", m.receipt + "x"]
    queue.queue.delete(bogus)
    queue.queue.change_visibility(bogus, 0)
    queue.queue.delete([])
    queue.queue.change_visibility([], 0)
    assert queue.queue.receive(10) == []  # still held by `m`
    queue.queue.delete([m.receipt])


def test_change_visibility_extends(queue: QueueHarness) -> None:
    queue.queue.send(texts(1))
    [m] = drain(queue)
    queue.queue.change_visibility([m.receipt], queue.queue.visibility_timeout * 3)
    expire(queue, 1.5)
    assert queue.queue.receive(10) == []
    expire(queue, 2.0)
    [again] = drain(queue)
    assert (again.message_id, again.receive_count) == (m.message_id, 2)


def test_change_visibility_shortens(queue: QueueHarness) -> None:
    queue.queue.send(texts(1))
    [m] = drain(queue)
    queue.queue.change_visibility([m.receipt], 0)
    [again] = drain(queue)
    assert (again.message_id, again.receive_count) == (m.message_id, 2)


def test_a_consumer_that_never_deletes_gets_everything_back(queue: QueueHarness) -> None:
    sent = texts(30)
    queue.queue.send(sent)
    assert bodies_of(drain(queue)) == sorted(sent)  # then the consumer crashes
    expire(queue)
    again = drain(queue, delete=True)
    assert bodies_of(again) == sorted(sent)
    assert {m.receive_count for m in again} == {2}


# ------------------------------------------------------------------ dead letters


def poison(h: QueueHarness, bad: list[bytes]) -> None:
    """Receive `bad` as often as the queue allows and never delete it, while a good message
    sent alongside is received once and deleted."""
    [good] = texts(1, "good")
    h.queue.send([*bad, good])
    got = drain(h)
    assert bodies_of(got) == sorted([*bad, good])
    h.queue.delete([m.receipt for m in got if m.body == good])
    for n in range(2, h.max_receives + 1):
        expire(h)
        got = drain(h)
        assert bodies_of(got) == sorted(bad)
        assert {m.receive_count for m in got} == {n}


def test_after_max_receives_a_message_is_dead_lettered_and_nothing_else_lost(
    queue: QueueHarness,
) -> None:
    bad = texts(2, "bad")
    poison(queue, bad)
    later = texts(3, "later")
    queue.queue.send(later)
    expire(queue)
    got = drain(queue)  # the attempt that moves `bad` to the dead-letter queue
    assert bodies_of(got) == sorted(later)
    assert {m.receive_count for m in got} == {1}
    dead = queue.queue.dead_letters(10)
    assert bodies_of(dead) == sorted(bad)
    assert all(m.receive_count >= queue.max_receives for m in dead)
    expire(queue)
    assert bodies_of(drain(queue)) == sorted(later)  # dead letters are not handed out


def test_dead_letters_is_a_look_that_consumes_nothing(queue: QueueHarness) -> None:
    assert queue.queue.dead_letters(10) == []
    bad = texts(3, "bad")
    poison(queue, bad)
    expire(queue)
    assert drain(queue) == []
    first = queue.queue.dead_letters(10)
    assert bodies_of(first) == sorted(bad)
    assert bodies_of(queue.queue.dead_letters(10)) == sorted(bad)
    assert len(queue.queue.dead_letters(2)) == 2
    assert queue.queue.dead_letters(0) == []
    assert len({m.message_id for m in first}) == 3


def test_redrive_moves_dead_letters_back_with_a_fresh_count(queue: QueueHarness) -> None:
    assert queue.queue.redrive() == 0
    bad = texts(2, "bad")
    poison(queue, bad)
    expire(queue)
    assert drain(queue) == []
    assert queue.queue.redrive() == 2
    assert queue.queue.dead_letters(10) == []
    got = drain(queue, delete=True)
    assert bodies_of(got) == sorted(bad)
    assert {m.receive_count for m in got} == {1}
    assert queue.queue.redrive() == 0


# ------------------------------------------------------------------ limits and waiting


def test_max_message_bytes_is_enforced_before_anything_is_sent(queue: QueueHarness) -> None:
    limit = queue.queue.max_message_bytes
    small, largest = b"{}", b"x" * limit
    with pytest.raises(ValueError):
        queue.queue.send([small, b"x" * (limit + 1)])
    assert queue.queue.receive(10, queue.receive_wait) == []  # all or nothing
    queue.queue.send([largest])
    [m] = drain(queue)
    assert m.body == largest


def test_an_empty_receive_waits_about_wait_seconds(queue: QueueHarness) -> None:
    start = time.monotonic()
    assert queue.queue.receive(10, 1.0) == []
    assert 0.9 <= time.monotonic() - start < 3.0


def test_a_long_poll_returns_when_a_message_arrives(queue: QueueHarness) -> None:
    sender = threading.Timer(0.2, queue.queue.send, args=(texts(1),))
    start = time.monotonic()
    sender.start()
    try:
        got = queue.queue.receive(10, 10.0)
    finally:
        sender.join()
    assert len(got) == 1
    assert time.monotonic() - start < 3.0


def test_concurrent_consumers_never_share_a_message(queue: QueueHarness) -> None:
    sent = texts(100)
    queue.queue.send(sent)
    seen: list[list[Message]] = [[] for _ in range(4)]

    def consume(mine: list[Message]) -> None:
        while got := queue.queue.receive(7, queue.receive_wait):
            mine.extend(got)

    threads = [threading.Thread(target=consume, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [m for s in seen for m in s]
    assert len({m.message_id for m in everything}) == len(everything) == len(sent)
    assert bodies_of(everything) == sorted(sent)


def test_settings_reach_the_queue(make_queue: Callable[..., QueueHarness]) -> None:
    h = make_queue(visibility_timeout=5.0, max_receives=2, max_message_bytes=1000)
    assert h.max_receives == 2
    assert h.queue.visibility_timeout >= 5.0
    assert h.queue.max_message_bytes <= 1000


def test_depth_counts_visible_in_flight_and_dead(queue: QueueHarness) -> None:
    q = queue.queue
    assert isinstance(q, QueueDepthProbe)
    empty = q.depth()
    assert (empty.visible, empty.in_flight, empty.dead_letters) == (0, 0, 0)
    assert empty.visible_again_by is None
    bad = texts(2, "bad")
    poison(queue, bad)
    expire(queue)
    assert drain(queue) == []  # `bad` is dead-lettered now
    q.send(texts(3, "later"))
    [first] = q.receive(1)
    d = q.depth()
    assert (d.visible, d.in_flight, d.dead_letters) == (2, 1, 2)
    assert d.visible_again_by is not None
    q.delete([first.receipt])
    d = q.depth()
    assert (d.visible, d.in_flight, d.dead_letters) == (2, 0, 2)
    assert d.visible_again_by is None
