"""Properties of the ingest endpoint, in process, over every body format, plain and gzipped:

- a valid reading is always accepted, with the id `derive_reading_id` gives it (or its own);
- an invalid reading always gets a 422 naming exactly its broken fields, and nothing of the
  request is enqueued;
- anything near the rules, and arbitrary bytes, gets an answer below 500.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest
from dependency_injector import providers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from telemetry.domain.readings import derive_reading_id
from telemetry.entrypoints.container import Container
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import URL, client_for, enqueued, make_container
from tests.strategies import NOW, fuzzy_reading_objects, invalid_reading_objects, reading_objects
from tests.support.fakes import FakeClock

SETTINGS = Settings(queue="memory", storage="memory", rate_burst=1_000_000)
# The reading strategies are costly to draw (about 40 ms an example); the request is not.
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CHEAP = settings(PROPERTY, max_examples=200)


def _json(readings: list[Any]) -> bytes:
    return msgspec.json.encode({"readings": readings})


def _ndjson(readings: list[Any]) -> bytes:
    return b"".join(msgspec.json.encode(r) + b"\n" for r in readings)


def _msgpack(readings: list[Any]) -> bytes:
    return msgspec.msgpack.encode({"readings": readings})


FORMATS: dict[str, tuple[str, Callable[[list[Any]], bytes]]] = {
    "json": ("application/json", _json),
    "ndjson": ("application/x-ndjson", _ndjson),
    "msgpack": ("application/msgpack", _msgpack),
}


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[TestClient[Any], Container]]:
    container = make_container(SETTINGS, vehicles=["*"])
    # the strategies draw timestamps up to NOW: the service's clock stands there
    container.clock.override(providers.Object(FakeClock(NOW)))
    with client_for(container, SETTINGS) as client:
        yield client, container


def _post(client: TestClient[Any], fmt: str, readings: list[Any], gzipped: bool) -> Any:
    ctype, encode = FORMATS[fmt]
    try:
        body = encode(readings)
    except (OverflowError, TypeError):
        return None  # not expressible in this format (msgpack ints beyond 64 bits)
    headers = {"Content-Type": ctype}
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return client.post(URL, content=body, headers=headers)


def _expected_id(obj: dict[str, Any]) -> str:
    rid = obj.get("reading_id")
    if rid:
        return str(rid)
    return derive_reading_id(obj["vehicle_id"], datetime.fromisoformat(obj["ts"]), obj["signals"])


def _identity(obj: dict[str, Any]) -> object:
    """A client's id repeated for one vehicle is a 422; a derived one never collides."""
    return (obj["vehicle_id"], obj["reading_id"]) if "reading_id" in obj else id(obj)


formats = st.sampled_from(sorted(FORMATS))


@PROPERTY
@given(readings=st.lists(reading_objects(), min_size=1, max_size=5, unique_by=_identity),
       fmt=formats, gzipped=st.booleans())
def test_valid_readings_are_accepted_with_their_derived_ids(app, readings, fmt, gzipped):
    client, _ = app
    r = _post(client, fmt, readings, gzipped)
    assert r is not None
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(readings),
                        "reading_ids": [_expected_id(o) for o in readings]}


@PROPERTY
@given(
    valid=st.lists(reading_objects(), max_size=3),
    invalid=invalid_reading_objects(),
    at=st.integers(0, 3),
    fmt=formats,
    gzipped=st.booleans(),
)
def test_an_invalid_reading_is_422_naming_its_fields_and_nothing_is_enqueued(
    app, valid, invalid, at, fmt, gzipped
):
    client, container = app
    obj, fields = invalid
    at = min(at, len(valid))
    readings = [*valid[:at], obj, *valid[at:]]
    before = enqueued(container)
    r = _post(client, fmt, readings, gzipped)
    if r is None:
        return
    assert r.status_code == 422, r.text
    problems = r.json()["extra"]
    assert {p["index"] for p in problems} == {at}
    assert {p["field"] for p in problems} == set(fields)
    assert enqueued(container) == before


@PROPERTY
@given(readings=st.lists(fuzzy_reading_objects(), min_size=1, max_size=4), fmt=formats,
       gzipped=st.booleans())
def test_anything_near_the_rules_gets_a_4xx_or_202_never_a_5xx(app, readings, fmt, gzipped):
    client, container = app
    before = enqueued(container)
    r = _post(client, fmt, readings, gzipped)
    if r is None:
        return
    assert r.status_code in (202, 400, 422), r.text
    if r.status_code != 202:
        assert enqueued(container) == before


@CHEAP
@given(body=st.binary(max_size=300) | st.text(max_size=100).map(str.encode),
       fmt=formats, gzipped=st.booleans())
def test_arbitrary_bytes_are_a_4xx(app, body, fmt, gzipped):
    client, container = app
    before = enqueued(container)
    headers = {"Content-Type": FORMATS[fmt][0]}
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    r = client.post(URL, content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert enqueued(container) == before


@CHEAP
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12,
), fmt=formats)
def test_any_decodable_value_gets_400_or_422(app, body, fmt):
    client, container = app
    before = enqueued(container)
    wrapped = [body] if fmt == "ndjson" else body
    ctype = FORMATS[fmt][0]
    try:
        data = _ndjson(wrapped) if fmt == "ndjson" else (
            msgspec.msgpack.encode(body) if fmt == "msgpack" else msgspec.json.encode(body))
    except (OverflowError, TypeError):
        return
    r = client.post(URL, content=data, headers={"Content-Type": ctype})
    assert r.status_code in (400, 422), r.text
    assert enqueued(container) == before
