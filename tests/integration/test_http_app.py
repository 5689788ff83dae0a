"""The Litestar app in process, on in-memory adapters: statuses, error bodies, nothing enqueued."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from telemetry.domain.api_keys import format_key
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.readings import derive_reading_id
from telemetry.entrypoints.container import Container
from telemetry.entrypoints.http.operations import READY_CACHE_SECONDS
from telemetry.entrypoints.http.sender import Sender
from telemetry.entrypoints.logs import _JsonFormatter, _TextFormatter
from telemetry.entrypoints.settings import MiB, Settings
from tests.integration.http_support import (
    JSON,
    KEY,
    MSGPACK,
    NDJSON,
    SECRET,
    SETTINGS,
    URL,
    BrokenQueue,
    HangingQueue,
    client_for,
    clients_for,
    enqueued,
    good,
    gz,
    gzip_bomb,
    make_container,
    ndjson,
    with_queue,
)
from tests.prometheus_text import samples


@pytest.fixture
def container() -> Container:
    return make_container(SETTINGS)


@pytest.fixture
def clients(container: Container) -> Iterator[tuple[TestClient[Any], TestClient[Any]]]:
    with clients_for(container, SETTINGS) as pair:
        yield pair


@pytest.fixture
def client(clients) -> TestClient[Any]:
    """The public app: the API and /healthz."""
    return clients[0]


@pytest.fixture
def ops(clients) -> TestClient[Any]:
    """The operations app of the same process: /metrics, /readyz, /schema."""
    return clients[1]


# ------------------------------------------------------------------ accepted, every body type


def test_accepts_and_enqueues(client, container) -> None:
    ts = datetime.now(UTC).isoformat()  # one instant: two `now`s could straddle an hour
    r = client.post(URL, json={"readings": [good(ts=ts), good("car-2", ts=ts)]})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 2 and len(r.json()["reading_ids"]) == 2
    assert enqueued(container) == 1


def test_the_three_formats_plain_and_gzipped_give_the_same_ids(client, container) -> None:
    ts = datetime.now(UTC).isoformat()  # one instant, one hour: one message per request
    readings = [good(ts=ts), good("car-2", reading_id="r-1", ts=ts), good("car-3", ts=ts)]
    batch = {"readings": readings}
    expected = [
        r.get("reading_id")
        or derive_reading_id(r["vehicle_id"], datetime.fromisoformat(r["ts"]), r["signals"])
        for r in readings
    ]
    bodies = [
        (msgspec.json.encode(batch), JSON),
        (ndjson(readings), NDJSON),
        (b"\n\r\n" + ndjson(readings).replace(b"\n", b"\n\n  \n"), NDJSON),  # blank lines
        (msgspec.msgpack.encode(batch), MSGPACK),
    ]
    for body, headers in bodies:
        for data, enc in ((body, {}), (gz(body), {"Content-Encoding": "gzip"})):
            r = client.post(URL, content=data, headers={**headers, **enc})
            assert r.status_code == 202, (headers, enc, r.text)
            assert r.json() == {"accepted": 3, "reading_ids": expected}
    assert enqueued(container) == 8


def test_content_type_parameters_and_case_are_ignored(client) -> None:
    body = msgspec.json.encode({"readings": [good()]})
    r = client.post(URL, content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 202, r.text


def test_msgpack_native_timestamps_are_accepted(client) -> None:
    body = msgspec.msgpack.encode({"readings": [good(ts=datetime.now(UTC))]})
    assert client.post(URL, content=body, headers=MSGPACK).status_code == 202


def test_concatenated_gzip_members_are_one_body(client) -> None:
    lines = ndjson([good(), good("car-2")])
    half = lines.index(b"\n") + 1
    r = client.post(URL, content=gz(lines[:half]) + gz(lines[half:]),
                    headers={**NDJSON, "Content-Encoding": "gzip"})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 2


# ------------------------------------------------------------------ 401 / 403


def test_missing_and_unknown_key_are_401_alike(client, container) -> None:
    answers = [
        client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": k})
        for k in ("", format_key("f" * 16, SECRET), format_key("0123456789abcdef", "t" * 43),
                  "not a key", KEY + "x")
    ]
    del client.headers["X-API-Key"]
    answers.append(client.post(URL, json={"readings": [good()]}))
    assert {a.status_code for a in answers} == {401}
    assert len({a.json()["detail"] for a in answers}) == 1
    assert enqueued(container) == 0


def test_a_revoked_key_is_401(client, container) -> None:
    assert client.post(URL, json={"readings": [good()]}).status_code == 202
    container.api_keys().revoke("fleet")
    assert client.post(URL, json={"readings": [good()]}).status_code == 401


def test_vehicle_not_allowed_is_403(client, container) -> None:
    r = client.post(URL, json={"readings": [good(), good("truck-1")]})
    assert r.status_code == 403
    assert "truck-1" in r.json()["detail"]
    assert enqueued(container) == 0


# ------------------------------------------------------------------ 400


@pytest.mark.parametrize("body", [b"{", b"[1,2]", b'{"readings": 3}', b'{"x": []}', b"",
                                  b'{"readings": [], "x": 1}', b'"readings"'])
def test_undecodable_json_is_400(client, container, body: bytes) -> None:
    r = client.post(URL, content=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert set(r.json()) >= {"status_code", "detail"}
    assert enqueued(container) == 0


@pytest.mark.parametrize("body", [b"\xc1", b"", b"\x92\x01\x02", b"\x81\xa1x\x90",
                                  b"\xa5\x80abcd",  # a str that is not UTF-8
                                  b"\x81\xa8readings\x01",
                                  msgspec.msgpack.encode({b"readings": []}),
                                  msgspec.msgpack.encode({"readings": []}) + b"\x00"])
def test_undecodable_msgpack_is_400(client, container, body: bytes) -> None:
    r = client.post(URL, content=body, headers=MSGPACK)
    assert r.status_code == 400, r.text
    assert enqueued(container) == 0


def test_strings_that_are_not_utf8_are_400(client, container) -> None:
    r = good()
    body = msgspec.msgpack.encode({"readings": [good(), r]})
    body = body.replace(b"\xa5car-1", b"\xa5car\x80\x81")
    assert client.post(URL, content=body, headers=MSGPACK).status_code == 400
    body = msgspec.json.encode({"readings": [r]}).replace(b"car-1", b"car\x80")
    assert client.post(URL, content=body, headers=JSON).status_code == 400
    assert client.post(URL, content=ndjson([r]).replace(b"car-1", b"car\x80"),
                       headers=NDJSON).status_code == 400
    assert enqueued(container) == 0


def test_a_bad_ndjson_line_is_400(client, container) -> None:
    body = ndjson([good()]) + b'{"vehicle_id": \n'
    r = client.post(URL, content=body, headers=NDJSON)
    assert r.status_code == 400, r.text
    assert enqueued(container) == 0


@pytest.mark.parametrize("data", [
    b"not gzip at all",
    gz(b'{"readings": []}')[:-5],  # cut off: no complete trailer
    gz(b'{"readings": []}')[:-8] + b"\0\0\0\0\0\0\0\0",  # wrong CRC
    gz(b'{"readings": []}') + b"trailing junk",
    b"",
])
def test_corrupt_gzip_is_400(client, container, data: bytes) -> None:
    r = client.post(URL, content=data, headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 400, r.text
    assert "gzip" in r.json()["detail"]
    assert enqueued(container) == 0


# ------------------------------------------------------------------ 413 / 415


def test_body_over_the_wire_limit_is_413(client, container) -> None:
    body = b" " * (MiB + 1)
    r = client.post(URL, content=body, headers=JSON)
    assert r.status_code == 413
    assert r.headers["connection"] == "close"  # the unread rest must not be parsed as a request

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(17):
            yield b" " * 65536

    r = client.post(URL, content=chunks(), headers=JSON)
    assert r.status_code == 413, r.text
    assert enqueued(container) == 0


def test_body_over_the_decompressed_limit_is_413() -> None:
    settings = Settings(queue="memory", storage="memory", max_body_bytes=1000,
                        max_decompressed_bytes=4000)
    c = make_container(settings)
    big = msgspec.json.encode({"readings": [good(signals={"s": "x" * 200})] * 30})
    assert len(gz(big)) < settings.max_body_bytes
    assert len(big) > settings.max_decompressed_bytes
    with client_for(c, settings) as client:
        r = client.post(URL, content=gz(big), headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 413, r.text
        assert "decompressed" in r.json()["detail"]
        small = msgspec.json.encode({"readings": [good()]})
        r = client.post(URL, content=gz(small), headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 202
    assert enqueued(c) == 1


def test_the_gzip_bomb_builder_is_honest() -> None:
    import gzip

    assert gzip.decompress(gzip_bomb(32 << 20, 8 << 20)) == bytes(32 << 20)


def test_a_gzip_bomb_is_413_without_being_inflated(client, container) -> None:
    bomb = gzip_bomb()  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < MiB
    tracemalloc.start()
    try:
        start = time.perf_counter()
        r = client.post(URL, content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert "decompressed" in r.json()["detail"]
    assert elapsed < 5
    # the 8 MiB limit, the 1 MB body and the client's copies of it; never the gigabyte
    assert peak < 40 * MiB, peak
    assert enqueued(container) == 0


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/xml"},
    {"Content-Type": "application/msgpack+json"},
    {"Content-Type": "application/json", "Content-Encoding": "br"},
    {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    {"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"},
])
def test_unsupported_type_or_encoding_is_415(client, container, headers) -> None:
    r = client.post(URL, content=b'{"readings": []}', headers=headers)
    assert r.status_code == 415, r.text
    assert enqueued(container) == 0


def test_missing_content_type_is_415(client) -> None:
    r = client.post(URL, content=b"{}", headers={"Content-Type": ""})
    assert r.status_code == 415


# ------------------------------------------------------------------ 422


def test_422_lists_every_problem_with_index_and_field(client, container) -> None:
    bad = [
        good(),
        good("bad id!"),
        good(ts="2026-11-29T01:00:00"),
        good(signals={"Vehicle.Speed": None, "ok": 1, "2bad": 3}),
        good(extra=1),
        good(ts=(datetime.now(UTC) + timedelta(hours=1)).isoformat()),
    ]
    r = client.post(URL, json={"readings": bad})
    assert r.status_code == 422, r.text
    found = {(p["index"], p["field"]) for p in r.json()["extra"]}
    assert {(1, "vehicle_id"), (2, "ts"), (3, "signals.Vehicle.Speed"), (3, "signals.2bad"),
            (4, "extra")} <= found
    assert enqueued(container) == 0
    r = client.post(URL, json={"readings": [good(), bad[5]]})
    assert r.status_code == 422
    assert [(p["index"], p["field"]) for p in r.json()["extra"]] == [(1, "ts")]


def test_ndjson_problems_are_indexed_by_non_empty_line(client, container) -> None:
    body = (ndjson([good()]) + b"\n\n" + ndjson([good("bad id!")]) + b"   \n"
            + ndjson([good(signals={"x": []})]))
    r = client.post(URL, content=body, headers=NDJSON)
    assert r.status_code == 422, r.text
    assert {(p["index"], p["field"]) for p in r.json()["extra"]} == {
        (1, "vehicle_id"), (2, "signals.x")}
    # a line that is valid JSON but no object is a reading that breaks the rules
    r = client.post(URL, content=ndjson([good(), [1, 2]]), headers=NDJSON)
    assert r.status_code == 422
    assert [p["index"] for p in r.json()["extra"]] == [1]
    assert enqueued(container) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), b"\x00\x01",
                                   msgspec.msgpack.Ext(5, b"x"), None, [1]])
def test_msgpack_values_json_cannot_carry_are_422(client, container, value) -> None:
    body = msgspec.msgpack.encode({"readings": [good(), good(signals={"ok": 1, "bad": value})]})
    r = client.post(URL, content=body, headers=MSGPACK)
    assert r.status_code == 422, r.text
    assert [(p["index"], p["field"]) for p in r.json()["extra"]] == [(1, "signals.bad")]
    assert enqueued(container) == 0


def test_msgpack_non_string_keys_and_odd_timestamps_are_422(client, container) -> None:
    readings = [
        good(signals={1: 2.0}),
        good(signals={b"Vehicle.Speed": 2.0}),
        {**good(), 7: "x"},
        good(ts=1764378000),
        good(ts=datetime(2026, 1, 1)),  # naive: no offset
        good(vehicle_id=b"car-1"),
    ]
    r = client.post(URL, content=msgspec.msgpack.encode({"readings": readings}), headers=MSGPACK)
    assert r.status_code == 422, r.text
    assert {p["index"] for p in r.json()["extra"]} == set(range(len(readings)))
    assert enqueued(container) == 0


def test_numbers_out_of_range_are_422_not_400(client) -> None:
    for number in (b"1e400", b"-1e400", b"123456789012345678901234567890"):
        body = b'{"readings": [{"vehicle_id": "car-1", "ts": "%s", "signals": {"x": %s}}]}' % (
            datetime.now(UTC).isoformat().encode(), number)
        r = client.post(URL, content=body, headers=JSON)
        assert r.status_code == 422, (number, r.text)
        assert r.json()["extra"][0]["index"] == 0


def test_empty_and_oversized_batches_are_422(client) -> None:
    for readings in ([], [good()] * 1001):
        r = client.post(URL, json={"readings": readings})
        assert r.status_code == 422
        assert r.json()["extra"][0]["index"] == -1
    assert client.post(URL, content=b"\n\n", headers=NDJSON).status_code == 422


# ------------------------------------------------------------------ 429


def test_rate_limit_is_429_with_retry_after_and_per_key() -> None:
    settings = Settings(queue="memory", storage="memory", rate_limit=0.5, rate_burst=2)
    c = make_container(settings)
    other = "fedcba9876543210"
    from telemetry.domain.api_keys import new_stored_key

    c.api_keys().add(new_stored_key(other, "o" * 43, "other", ["*"], datetime.now(UTC)))
    with client_for(c, settings) as client:
        statuses = [client.post(URL, json={"readings": [good()]}).status_code for _ in range(2)]
        assert statuses == [202, 202]
        r = client.post(URL, json={"readings": [good()]})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        # rejected before the body is read: even a bad body is a 429 now
        assert client.post(URL, content=b"{", headers=JSON).status_code == 429
        r = client.post(URL, json={"readings": [good()]},
                        headers={"X-API-Key": format_key(other, "o" * 43)})
        assert r.status_code == 202
    assert enqueued(c) == 3


# ------------------------------------------------------------------ 503 / 500


def test_queue_outage_is_503_with_retry_after(client, container) -> None:
    container.queue().available = False
    r = client.post(URL, json={"readings": [good()]})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    container.queue().available = True
    assert enqueued(container) == 0


def test_a_queue_that_does_not_answer_is_503_within_the_enqueue_timeout() -> None:
    settings = Settings(queue="memory", storage="memory", enqueue_timeout=0.3)
    queue = HangingQueue()
    c = with_queue(make_container(settings), queue)
    try:
        with clients_for(c, settings) as (client, ops):
            start = time.perf_counter()
            answers = [client.post(URL, json={"readings": [good()]}) for _ in range(3)]
            elapsed = time.perf_counter() - start
            assert [a.status_code for a in answers] == [503] * 3
            assert all(a.headers["retry-after"] for a in answers)
            assert elapsed < 3 * 0.3 + 1.5
            assert queue.messages == {}
            metrics = samples(ops.get("/metrics").text)
            timeouts = "telemetry_ingest_requests_total{reason=enqueue_timeout,status=503}"
            assert metrics[timeouts] == 3
            assert metrics["telemetry_enqueue_seconds_count{outcome=timeout}"] == 3
    finally:
        # The abandoned sends now finish: the documented at-least-once case that the
        # client's retry (same reading ids) makes harmless.
        queue.release.set()


def test_a_send_that_times_out_before_a_thread_takes_it_never_runs() -> None:
    """The sender's threads are all busy with a queue that hangs: a request waiting for one
    answers 503 in time, and its readings are not enqueued later."""
    release, sent = threading.Event(), []

    def send(messages: list[bytes]) -> None:
        release.wait(10)
        sent.append(messages)

    sender = Sender(send, threads=1)

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(sender.send([b"first"], 0.2))
        await asyncio.sleep(0.05)  # the one thread is inside send with `first`
        second = asyncio.ensure_future(sender.send([b"second"], 0.2))
        outcomes = []
        for f in (first, second):
            try:
                await f
                outcomes.append("ok")
            except TimeoutError:
                outcomes.append("timeout")
        release.set()
        third = await asyncio.wait_for(sender.send([b"third"], 5), 5)
        assert third is None
        return outcomes

    try:
        assert asyncio.run(scenario()) == ["timeout", "timeout"]
        # The first was running when it timed out (it may still finish: at-least-once); the
        # second never started, so it never runs.
        assert sent == [[b"first"], [b"third"]]
    finally:
        release.set()
        sender.stop()


class _PausingJobs:
    """The sender's job queue (a stdlib SimpleQueue), pausing a thread that has taken a job
    before it reads it, so a test can act on the request in between."""

    def __init__(self, jobs: Any) -> None:
        self._jobs = jobs
        self.taken, self.go_on = threading.Event(), threading.Event()
        self.put, self.get_nowait = jobs.put, jobs.get_nowait

    def get(self) -> Any:
        job = self._jobs.get()
        if job is not None:
            self.taken.set()
            self.go_on.wait(5)
        return job


@pytest.mark.parametrize("when", ["taken, not yet read", "read, inside the send"])
def test_a_request_that_goes_away_while_a_thread_takes_its_job(when: str) -> None:
    """The race between a request emptying its job (it was cancelled: the client went away)
    and a thread taking that job. Emptied before the thread reads it: never sent. Emptied
    after: the thread sends the messages it read and its answer goes nowhere. Either way the
    thread lives on and the next request is sent."""
    in_send, release, sent = threading.Event(), threading.Event(), []

    def send(messages: list[bytes]) -> None:
        in_send.set()
        release.wait(5)
        sent.append(list(messages))

    sender = Sender(send, threads=1)
    jobs = sender._jobs = _PausingJobs(sender._jobs)  # type: ignore[assignment]
    if when == "read, inside the send":
        jobs.go_on.set()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(sender.send([b"gone"], 5))
        await loop.run_in_executor(None, jobs.taken.wait, 5)
        if when == "read, inside the send":
            await loop.run_in_executor(None, in_send.wait, 5)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        jobs.go_on.set()
        release.set()
        await asyncio.wait_for(sender.send([b"next"], 5), 5)

    try:
        asyncio.run(scenario())
    finally:
        jobs.go_on.set()
        release.set()
        sender.stop()
    if when == "taken, not yet read":
        assert sent == [[b"next"]]
    else:
        assert sent == [[b"gone"], [b"next"]]


def test_concurrent_sends_do_not_wait_for_each_other() -> None:
    """Requests sending at once are sent together (one `queue.send` of all their messages) or
    side by side, never one after the other; each message once."""
    sent: list[bytes] = []
    lock = threading.Lock()

    def send(messages: list[bytes]) -> None:
        time.sleep(0.1)
        with lock:
            sent.extend(messages)

    sender = Sender(send, threads=8)

    async def scenario() -> None:
        await asyncio.gather(*(sender.send([b"x%d" % i, b"y%d" % i], 5) for i in range(8)))

    try:
        start = time.monotonic()
        asyncio.run(scenario())
        elapsed = time.monotonic() - start
    finally:
        sender.stop()
    assert sorted(sent) == sorted([b"x%d" % i for i in range(8)] + [b"y%d" % i for i in range(8)])
    assert elapsed < 0.5  # one after the other: 0.8 s


def test_requests_sent_together_share_a_failure_each_its_own_answer() -> None:
    """A send of several requests' messages that fails fails each of them; the next ones go
    through."""
    calls: list[list[bytes]] = []
    gate = threading.Event()

    def send(messages: list[bytes]) -> None:
        gate.wait(5)
        calls.append(list(messages))
        if any(m.startswith(b"bad") for m in messages):
            raise QueueUnavailable("down")

    sender = Sender(send, threads=1)

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(sender.send([b"a"], 5))
        await asyncio.sleep(0.05)  # the one thread is inside send with `a`
        rest = [asyncio.ensure_future(sender.send([m], 5)) for m in (b"bad", b"b")]
        await asyncio.sleep(0.05)
        gate.set()
        out = []
        for f in (first, *rest):
            try:
                await f
                out.append("ok")
            except QueueUnavailable:
                out.append("unavailable")
        await sender.send([b"c"], 5)
        return out

    try:
        assert asyncio.run(scenario()) == ["ok", "unavailable", "unavailable"]
    finally:
        gate.set()
        sender.stop()
    assert calls == [[b"a"], [b"bad", b"b"], [b"c"]]


def test_an_unexpected_error_is_a_json_500_and_logged(caplog) -> None:
    c = with_queue(make_container(SETTINGS), BrokenQueue())
    caplog.set_level(logging.INFO)
    with client_for(c, SETTINGS) as client:
        r = client.post(URL, json={"readings": [good()]})
    assert r.status_code == 500
    assert r.json() == {"status_code": 500, "detail": "Internal Server Error"}
    failed = [rec for rec in caplog.records if rec.getMessage() == "request_failed"]
    assert len(failed) == 1 and failed[0].exc_info


# ------------------------------------------------------------------ readyz, metrics, schema


def test_healthz(client) -> None:
    assert client.get("/healthz", headers={}).json() == {"status": "ok"}


def test_readyz_follows_the_queue(ops, container) -> None:
    r = ops.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "queue": "ok", "storage": "ok"}
    container.queue().available = False
    time.sleep(READY_CACHE_SECONDS)
    r = ops.get("/readyz")
    assert r.status_code == 503
    assert r.json()["queue"] == "unavailable"


def test_readyz_does_not_hang_on_a_queue_that_does_not_answer() -> None:
    settings = Settings(queue="memory", storage="memory", ready_timeout=0.3)
    queue = HangingQueue()
    c = with_queue(make_container(settings), queue)
    try:
        with clients_for(c, settings) as (_, ops):
            start = time.perf_counter()
            r = ops.get("/readyz")
            assert r.status_code == 503
            assert r.json()["queue"] == "timeout"
            assert time.perf_counter() - start < 2
    finally:
        queue.release.set()


def test_metrics_count_requests_readings_and_enqueue_latency(client, ops) -> None:
    client.post(URL, json={"readings": [good(), good("car-2")]})
    client.post(URL, json={"readings": [good(), good("bad id")]})
    client.post(URL, json={"readings": [good("truck-1")] * 3})
    client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": ""})
    r = ops.get("/metrics", headers={})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE telemetry_enqueue_seconds histogram" in r.text.splitlines()
    got = samples(r.text)
    for name, value in {
        "telemetry_ingest_requests_total{reason=accepted,status=202}": 1,
        "telemetry_ingest_requests_total{reason=invalid,status=422}": 1,
        "telemetry_ingest_requests_total{reason=forbidden,status=403}": 1,
        "telemetry_ingest_requests_total{reason=unauthorized,status=401}": 1,
        "telemetry_ingest_requests_total{reason=rate_limited,status=429}": 0,
        "telemetry_readings_accepted_total": 2,
        "telemetry_readings_rejected_total{reason=invalid}": 2,
        "telemetry_readings_rejected_total{reason=forbidden}": 3,
        "telemetry_enqueue_seconds_count{outcome=ok}": 1,
        "telemetry_enqueue_seconds_bucket{le=+Inf,outcome=ok}": 1,
    }.items():
        assert got[name] == value, name


CONTRACT_STATUSES = {"202", "400", "401", "403", "413", "415", "422", "429", "503"}


def test_the_openapi_document_covers_the_contract(client, ops) -> None:
    for path in ("/schema", "/schema/openapi.json"):
        r = ops.get(path, headers={})
        assert r.status_code == 200
        doc = r.json()
        op = doc["paths"]["/v1/readings"]["post"]
        assert set(op["responses"]) >= CONTRACT_STATUSES
        for status in ("429", "503"):
            assert "Retry-After" in op["responses"][status]["headers"]
        content = op["requestBody"]["content"]
        assert set(content) == {"application/json", "application/x-ndjson",
                                "application/msgpack"}
        assert all(media["examples"] for media in content.values())
        assert op["security"] == [{"ApiKey": []}]
        assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
        assert {"/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    # the documented examples are accepted as they stand (ts aside: they are in the past)
    example = content["application/json"]["examples"]["two readings"]["value"]
    assert client.post(URL, json=example).status_code == 202


# ------------------------------------------------------------------ logs


def _every_rejection(
    client: TestClient[Any], ops: TestClient[Any], container: Container
) -> None:
    """One request per way of being answered, each carrying the key somewhere."""
    client.post(URL, json={"readings": [good()]})  # 202
    client.post(URL, json={"readings": [good("truck-1")]})  # 403
    client.post(URL, json={"readings": [good("bad id")]})  # 422
    client.post(URL, json={"readings": [good(api_key=KEY)]})  # 422, the key in the body
    client.post(URL, content=b"{" + KEY.encode(), headers=JSON)  # 400
    client.post(URL, content=b"x", headers={"Content-Type": "text/plain"})  # 415
    client.post(URL, content=b"x" * (MiB + 1), headers=JSON)  # 413
    client.post(URL, content=b"x", headers={**JSON, "Content-Encoding": "gzip"})  # 400
    client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": KEY[:-1] + "t"})  # 401
    client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": KEY + " "})  # 401
    container.queue().available = False
    client.post(URL, json={"readings": [good()]})  # 503
    ops.get("/readyz")
    container.queue().available = True
    time.sleep(READY_CACHE_SECONDS)
    ops.get("/readyz")
    ops.get("/metrics")


def test_the_key_never_appears_in_any_log_line(client, ops, container, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    _every_rejection(client, ops, container)
    # and the two answers the shared client cannot give: 500 (a queue bug) and 429
    settings = Settings(queue="memory", storage="memory", rate_limit=0.01, rate_burst=1)
    with client_for(with_queue(make_container(settings), BrokenQueue()), settings) as other:
        assert other.post(URL, json={"readings": [good()]}).status_code == 500
        assert other.post(URL, json={"readings": [good()]}).status_code == 429
    assert len(caplog.records) > 5
    formatters = (_JsonFormatter(), _TextFormatter())
    for rec in caplog.records:
        for text in (*(f.format(rec) for f in formatters), repr(rec.__dict__)):
            assert SECRET not in text and KEY not in text, text


def test_one_log_line_per_rejected_request_and_none_on_success(client, container, caplog):
    caplog.set_level(logging.DEBUG, logger="telemetry")
    client.post(URL, json={"readings": [good()]})
    assert [r for r in caplog.records if r.name.startswith("telemetry")] == []
    client.post(URL, json={"readings": [good("truck-1")]})
    client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": ""})
    rejected = [r for r in caplog.records if r.getMessage() == "request_rejected"]
    assert len(rejected) == 2
    first = msgspec.json.decode(_JsonFormatter().format(rejected[0]))
    assert first["status"] == 403 and first["reason"] == "forbidden"
    assert first["key_name"] == "fleet"
    second = msgspec.json.decode(_JsonFormatter().format(rejected[1]))
    assert second["status"] == 401 and second["key_name"] is None


# ------------------------------------------------------------------ settings


def test_ingest_settings_parse_and_name_themselves_when_bad(tmp_path) -> None:
    from telemetry.entrypoints.settings import ConfigError, load_settings

    s = load_settings({"TELEMETRY_DATA_DIR": str(tmp_path)})
    assert (s.rate_limit, s.rate_burst, s.enqueue_timeout, s.ready_timeout) == (
        10_000.0, 20_000, 5.0, 2.0)
    assert s.api_keys_path == tmp_path / "keys.json"
    s = load_settings({"TELEMETRY_KEYS_FILE": str(tmp_path / "k.json"),
                       "TELEMETRY_RATE_LIMIT": "2.5", "TELEMETRY_RATE_BURST": "5"})
    assert s.api_keys_path == tmp_path / "k.json"
    assert (s.rate_limit, s.rate_burst) == (2.5, 5)
    for name, value in [("TELEMETRY_RATE_LIMIT", "0"), ("TELEMETRY_RATE_BURST", "x"),
                        ("TELEMETRY_ENQUEUE_TIMEOUT", "-1"), ("TELEMETRY_READY_TIMEOUT", "")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})
