"""What one request may cost: deep nesting is a 400, a body of too many readings is refused
before its readings are decoded, and a 422 lists a bounded number of problems."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from telemetry.entrypoints.container import Container
from telemetry.entrypoints.http import bodies
from telemetry.entrypoints.http.errors import MAX_LISTED_PROBLEMS, Unprocessable
from tests.integration.http_support import (
    JSON,
    MSGPACK,
    NDJSON,
    SETTINGS,
    URL,
    client_for,
    good,
    make_container,
    ndjson,
)


@pytest.fixture
def container() -> Container:
    return make_container(SETTINGS)


@pytest.fixture
def client(container: Container) -> Iterator[TestClient[Any]]:
    with client_for(container, SETTINGS) as c:
        yield c


def _in_signal(deep: bytes) -> bytes:
    head = msgspec.json.encode(good())[:-2]  # ...,"signals":{"Vehicle.Speed":1.5
    return b'{"readings":[' + head + b',"Deep":' + deep + b"}}]}"


JSON_DEEP = b"[" * 100_000 + b"]" * 100_000
MSGPACK_DEEP = b"\x91" * 20_000 + b"\x90"


@pytest.mark.parametrize(("headers", "body"), [
    (JSON, JSON_DEEP),
    (JSON, b'{"readings":' + JSON_DEEP + b"}"),
    (JSON, _in_signal(JSON_DEEP)),
    (NDJSON, _in_signal(JSON_DEEP)[13:-2] + b"\n"),
    (MSGPACK, MSGPACK_DEEP),
    (MSGPACK, b"\x81\xa8readings" + MSGPACK_DEEP),
    (MSGPACK, msgspec.msgpack.encode({"readings": [{**good(), "signals": {"a": 1}}]})[:-3]
     + b"\xa1a" + MSGPACK_DEEP),
], ids=["json", "json-readings", "json-signal", "ndjson-signal", "msgpack", "msgpack-readings",
        "msgpack-signal"])
def test_deep_nesting_is_400_never_500(client, container, headers, body) -> None:
    r = client.post(URL, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["detail"]
    assert container.queue().receive(10) == []


def test_too_many_readings_are_refused_before_the_rest_is_decoded(client, container) -> None:
    # NDJSON: 1001 readings, then a line that would be a 400 were it ever decoded
    r = client.post(URL, content=ndjson([good()] * 1001) + b"{not json\n", headers=NDJSON)
    assert r.status_code == 422, r.text
    assert "more than 1000 readings" in r.json()["extra"][0]["message"]
    # msgpack: an array header announcing 2**31 readings, then bytes no decoder could read
    r = client.post(URL, content=b"\x81\xa8readings\xdd\x80\x00\x00\x00" + b"\xc1" * 40_000,
                    headers=MSGPACK)
    assert r.status_code == 422, r.text
    r = client.post(URL, json={"readings": [good()] * 1001})
    assert r.status_code == 422, r.text
    assert container.queue().receive(10) == []


def test_a_422_lists_at_most_a_fixed_number_of_problems_and_says_how_many(client) -> None:
    bad = {"vehicle_id": "car 1", "ts": "yesterday", "signals": {"1a": None}}
    r = client.post(URL, json={"readings": [bad] * 1000})
    assert r.status_code == 422
    body = r.json()
    assert len(body["extra"]) == MAX_LISTED_PROBLEMS
    assert f"the first {MAX_LISTED_PROBLEMS} of 3000 problems" in body["detail"]
    assert len(r.content) < 20_000


def test_a_request_spanning_too_many_hours_or_too_old_is_422(client, container) -> None:
    now = datetime.now(UTC)
    fan = [good(ts=(now - timedelta(minutes=30 * i)).isoformat()) for i in range(1000)]
    r = client.post(URL, json={"readings": fan})
    assert r.status_code == 422, r.text
    (whole,) = [p for p in r.json()["extra"] if p["index"] == -1]
    assert "split it" in whole["message"]
    old = good(ts=(now - timedelta(days=36)).isoformat())
    r = client.post(URL, json={"readings": [old]})
    assert r.status_code == 422, r.text
    assert "maximum lateness" in r.json()["extra"][0]["message"]
    assert container.queue().receive(10) == []


@pytest.mark.parametrize("fmt", [bodies.JSON, bodies.NDJSON])
@pytest.mark.parametrize("n", [999, 1000, 1001])
def test_the_count_check_sees_every_value_however_few_separators(fmt, n) -> None:
    """The count's shortcut (fewer commas or newlines than the maximum) holds at the edge:
    values padded to any length, nothing but the separators between them."""
    value = b"1" + b" " * 40
    body = (b'{"readings":[' + b",".join([value] * n) + b"]}" if fmt == bodies.JSON
            else b"\n".join([value] * n))
    if n > 1000:
        with pytest.raises(Unprocessable):
            bodies.check_count(fmt, body, 1000)
    else:
        bodies.check_count(fmt, body, 1000)
