"""SqsQueue: what the port suite does not cover, against moto in process and a moto server.

Failures SQS produces but moto does not (partial batch failures) are injected by a client
wrapper around the real moto client; the tests check the queue's state afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from telemetry.adapters.sqs import (
    BATCH_MAX_PAYLOAD,
    SqsQueue,
    _chunks,
    _Entry,
    decode_body,
    encode_body,
    region_of,
)
from telemetry.domain.errors import QueueUnavailable
from tests.support import moto as moto_server
from tests.support.moto import AwsTarget

aws = moto_server.aws


def drain(q: SqsQueue, wait: float = 0) -> list[bytes]:
    bodies: list[bytes] = []
    while ms := q.receive(10, wait):
        bodies.extend(m.body for m in ms)
        q.delete([m.receipt for m in ms])
    return bodies


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    "body",
    [b"{}\n", "caf\u00e9 \U0001f697\n".encode(), b"", b"\x00\x01", "\uffff".encode(),
     "\ufffe".encode(), b"\xff\xfe", b"a\x0bb", "\ud7ff\ue000".encode()],
)
def test_every_body_survives_the_encoding(body: bytes) -> None:
    text, encoding = encode_body(body)
    assert text  # SQS refuses an empty body
    attrs = {"telemetry-enc": {"StringValue": encoding}} if encoding else {}
    assert decode_body({"Body": text, "MessageAttributes": attrs}) == body


def test_sqs_text_travels_as_is() -> None:
    assert encode_body(b'{"v":1}\n\t\r') == ('{"v":1}\n\t\r', None)


def test_send_groups_respect_ten_entries_and_one_mib() -> None:
    big = [_Entry(str(i), "x" * 300_000, None) for i in range(7)]
    small = [_Entry(str(i), "y", None) for i in range(23)]
    groups = list(_chunks(big + small))
    assert all(len(g) <= 10 for g in groups)
    assert all(sum(e.size for e in g) <= BATCH_MAX_PAYLOAD for g in groups)
    assert [e.id for g in groups for e in g] == [e.id for e in big + small]
    assert [len(g) for g in groups] == [3, 3, 10, 10, 4]


def test_region_comes_from_an_aws_queue_url() -> None:
    assert region_of("https://sqs.eu-west-1.amazonaws.com/123456789012/q") == "eu-west-1"
    assert region_of("https://ap-southeast-2.queue.amazonaws.com/1/q") == "ap-southeast-2"
    assert region_of("http://127.0.0.1:5000/123456789012/q") is None


# ------------------------------------------------------------------ against moto


def test_attributes_are_read_from_the_queue(aws: AwsTarget) -> None:
    q = aws.queue(visibility_timeout=7, max_receives=3, message_size=1024 * 1024)
    assert q.visibility_timeout == 7
    assert q.max_receives == 3
    assert q.queue_max_message_bytes == 1024 * 1024
    # Room for base64 (4/3) and its attribute inside SQS's limit.
    assert 4 * -(-q.max_message_bytes // 3) + 64 <= 1024 * 1024
    assert q.max_message_bytes > 700_000
    poll = q._poll_client.meta.config
    assert poll.retries["mode"] in ("standard", "adaptive")
    assert poll.connect_timeout <= 5 and 20 < poll.read_timeout <= 60  # outlasts a long poll
    calls = q._client.meta.config  # sends, deletes: a hung endpoint is given up on quickly
    assert calls.connect_timeout <= 5 and calls.read_timeout <= 10


def test_odd_bodies_and_the_largest_body_arrive_intact(aws: AwsTarget) -> None:
    q = aws.queue(message_size=64 * 1024)
    largest = os.urandom(q.max_message_bytes)  # random bytes: the base64 worst case
    bodies = [b"", "\uffff\x00".encode(), b"\xff", b'{"v":1}\n', largest]
    q.send(bodies)
    assert sorted(drain(q)) == sorted(bodies)
    with pytest.raises(ValueError, match="over"):
        q.send([b"x" * (q.max_message_bytes + 1)])


def test_many_bodies_go_in_batches_and_all_arrive_once(aws: AwsTarget) -> None:
    q = aws.queue()
    bodies = [f"body {i}\n".encode() for i in range(23)]
    q.send(bodies)
    assert sorted(drain(q)) == sorted(bodies)


def test_over_one_mib_in_one_send(aws: AwsTarget) -> None:
    if aws.kind == "moto_server":
        pytest.skip("5 MB through the slow moto server: in process is enough for the limit")
    q = aws.queue(message_size=1024 * 1024)
    bodies = [bytes([65 + i]) * 700_000 for i in range(7)]  # one per SendMessageBatch
    q.send(bodies)
    assert sorted(drain(q)) == sorted(bodies)


class Flaky:
    """The real client, but the first `times` batch calls fail their odd-numbered entries, as
    SQS can."""

    def __init__(self, real: Any, *, times: int = 1, sender_fault: bool = False) -> None:
        self.real = real
        self.times = times
        self.sender_fault = sender_fault
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _partial(self, op: str, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > self.times:
            return getattr(self.real, op)(**kwargs)
        entries = kwargs.pop("Entries")
        keep = [e for e in entries if int(e["Id"]) % 2 == 0]  # ids stay the same on a retry
        fail = [e for e in entries if e not in keep]
        resp = getattr(self.real, op)(Entries=keep, **kwargs) if keep else {}
        resp["Failed"] = [{"Id": e["Id"], "SenderFault": self.sender_fault,
                           "Code": "InternalError", "Message": "injected"} for e in fail]
        return resp

    def send_message_batch(self, **kwargs: Any) -> Any:
        return self._partial("send_message_batch", **kwargs)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        return self._partial("delete_message_batch", **kwargs)


def test_a_partial_send_failure_retries_only_the_failed_entries(aws: AwsTarget) -> None:
    url = aws.queue().queue_url
    flaky = Flaky(aws.client("sqs"), times=2)
    q = SqsQueue(url, client=flaky, sleep=lambda s: None)  # type: ignore[arg-type]
    bodies = [f"m{i}".encode() for i in range(8)]
    q.send(bodies)
    assert sorted(drain(q)) == sorted(bodies)  # each once: the taken ones were not resent


def test_a_send_that_keeps_failing_raises_queue_unavailable(aws: AwsTarget) -> None:
    url = aws.queue().queue_url
    flaky = Flaky(aws.client("sqs"), times=100)
    q = SqsQueue(url, client=flaky, sleep=lambda s: None, partial_failure_attempts=3)  # type: ignore[arg-type]
    with pytest.raises(QueueUnavailable, match="after 3 attempts"):
        q.send([b"a", b"b"])
    assert flaky.calls == 3


def test_a_sender_fault_is_not_retried(aws: AwsTarget) -> None:
    url = aws.queue().queue_url
    flaky = Flaky(aws.client("sqs"), times=100, sender_fault=True)
    q = SqsQueue(url, client=flaky, sleep=lambda s: None)  # type: ignore[arg-type]
    with pytest.raises(QueueUnavailable, match="refused"):
        q.send([b"a", b"b"])
    assert flaky.calls == 1


def test_a_partial_delete_failure_is_retried(aws: AwsTarget) -> None:
    url = aws.queue().queue_url
    flaky = Flaky(aws.client("sqs"), times=0)
    q = SqsQueue(url, client=flaky, sleep=lambda s: None)  # type: ignore[arg-type]
    q.send([f"m{i}".encode() for i in range(6)])
    got = q.receive(10) + q.receive(10)
    flaky.times = flaky.calls + 1
    q.delete([m.receipt for m in got] + ["not-a-receipt"])
    assert drain(q) == []


def test_dead_letters_and_redrive(aws: AwsTarget) -> None:
    q = aws.queue(visibility_timeout=30, max_receives=2)
    q.send([b"poison", "\uffff".encode()])
    for _ in range(2):
        got = q.receive(10)
        assert len(got) == 2
        q.change_visibility([m.receipt for m in got], 0)
    assert q.receive(10) == []  # a third receive dead-letters them
    dead = q.dead_letters(10)
    assert sorted(m.body for m in dead) == sorted([b"poison", "\uffff".encode()])
    assert len(q.dead_letters(1)) == 1
    assert len(q.dead_letters(10)) == 2  # looking did not consume
    assert q.redrive() == 2
    assert q.dead_letters(10) == []
    got = q.receive(10)
    assert sorted(m.body for m in got) == sorted([b"poison", "\uffff".encode()])
    assert all(m.receive_count == 1 for m in got)


def test_a_queue_without_redrive_policy_has_no_dead_letters(aws: AwsTarget) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=moto_server.unique("plain"))["QueueUrl"]
    q = SqsQueue(url)
    assert q.max_receives is None
    assert q.dead_letters(10) == [] and q.redrive() == 0


def test_concurrent_sends_share_one_client(aws: AwsTarget) -> None:
    q = aws.queue()
    errors: list[BaseException] = []

    def send(t: int) -> None:
        try:
            for i in range(3):
                q.send([f"t{t}-{i}".encode()])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(drain(q))) == 18


def test_errors_become_queue_unavailable(aws: AwsTarget) -> None:
    q = aws.queue()
    q.check()
    missing = q.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    with pytest.raises(QueueUnavailable, match="queue"):
        SqsQueue.connect(missing)
    aws.client("sqs").delete_queue(QueueUrl=q.queue_url)
    with pytest.raises(QueueUnavailable):
        q.check()
    with pytest.raises(QueueUnavailable):
        q.send([b"x"])
    with pytest.raises(QueueUnavailable):
        q.receive(1)


def test_an_unreachable_endpoint_is_queue_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.moto import aws_target

    with aws_target("moto_server"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
        t0 = time.monotonic()
        with pytest.raises(QueueUnavailable):
            SqsQueue.connect("http://127.0.0.1:9/123456789012/q", max_attempts=2)
        assert time.monotonic() - t0 < 10
