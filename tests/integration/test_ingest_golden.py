"""The same requests give the same reading ids, queue messages and lake, byte for byte.

Fixed requests (every body format, gzip, given and derived ids, offsets, whole and fractional
seconds, every value type, one-vehicle requests that carry partials, hours split over several
envelopes) go through the public app to a memory queue, then through `DrainBatches` to a memory
lake. The digests below were taken from the code before the ingest path was reworked for speed
(docs/benchmarks.md, round 5): any change to what ingest answers, enqueues or stores shows
here. Raw file names hash the queue's receipts, so the memory queue's receipts come from a
counter here and the lake's digest covers every object's key and bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from dependency_injector import providers

from telemetry.adapters import memory
from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.domain import readings
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import Reading, derive_reading_id, derive_reading_ids
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import URL, client_for, make_container
from tests.support.fakes import FakeClock

NOW = datetime(2026, 11, 29, 12, 0, 0, 250_000, tzinfo=UTC)

# Taken on the code before round 5; see the module docstring.
GOLDEN_IDS = "c356cc258fb32c28db1907c007f5cf7e"
GOLDEN_MESSAGES = "730bddb09b578712a8ec133fc8bb4e0e"
GOLDEN_LAKE = "a3ac17a3a97a19c4ea777eede433025b"
GOLDEN_ONE_ID = "d743c0749f3c10860822475776497dee"


def _ts(minutes_ago: float, offset_hours: int = 0, whole: bool = False) -> str:
    t = NOW - timedelta(minutes=minutes_ago)
    if whole:
        t = t.replace(microsecond=0)
    return t.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


def _reading(i: int, vid: str, minutes_ago: float, **kw: Any) -> dict[str, Any]:
    signals: dict[str, Any] = {
        "Vehicle.Speed": round(i * 1.37 % 130, 3),
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": i % 101,
        "Vehicle.Cabin.Door.Row1.IsOpen": i % 3 == 0,
        "Vehicle.Body.Lights.Beam.Low.Mode": ["off", "on", "auto", "é\"\\\n"][i % 4],
        "Vehicle.Exterior.AirTemperature": -12.5 + i / 7,
    }
    r: dict[str, Any] = {"vehicle_id": vid,
                         "ts": _ts(minutes_ago, kw.pop("offset", 0), kw.pop("whole", False)),
                         "signals": signals}
    r.update(kw)
    return r


def _requests() -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(label, body, headers) of each fixed request, in order."""
    j = {"content-type": "application/json"}
    mixed = [_reading(i, f"car-{i % 37}", i * 0.3, offset=(i % 5) - 2, whole=i % 4 == 0)
             for i in range(100)]
    yield "json mixed", msgspec.json.encode({"readings": mixed}), j
    one = [_reading(i, "car-7", 130 + i * 0.1) for i in range(120)]  # hour 09 alone
    yield "json one vehicle", msgspec.json.encode({"readings": one}), j
    given = [_reading(i, f"car-{i % 3}", 50 + i, reading_id=f"given-{i}.x:y")
             for i in range(30)]
    yield "json given ids, two hours", msgspec.json.encode({"readings": given}), j
    half = [_reading(i, "car-9", i * 0.05, **({"reading_id": f"r{i}"} if i % 2 else {}))
            for i in range(40)]
    yield "json half given", msgspec.json.encode({"readings": half}), j
    nd = b"".join(msgspec.json.encode(_reading(i, f"car-{i}", 200 + i * 2)) + b"\n"
                  for i in range(60))
    yield "ndjson over hours", nd, {"content-type": "application/x-ndjson"}
    mp = msgspec.msgpack.encode({"readings": [_reading(i, "car-11", 3 + i) for i in range(25)]})
    yield "msgpack", mp, {"content-type": "application/msgpack"}
    big = [_reading(i, f"car-{i % 2}", i * 0.01) for i in range(1000)]
    yield "gzip json, 1000 readings", gzip.compress(msgspec.json.encode({"readings": big}),
                                                    mtime=0), {**j, "content-encoding": "gzip"}


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:32]


@pytest.fixture(params=["kernel", "python"])
def outcome(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    # Both paths: the compiled kernel (`telemetry._ingestcore`) and the pure-Python one.
    if request.param == "python":
        monkeypatch.setattr(readings, "kernel", None)
    elif readings.kernel is None:
        if os.environ.get("TELEMETRY_REQUIRE_NATIVE"):
            pytest.fail("telemetry._ingestcore is not built")
        pytest.skip("telemetry._ingestcore is not built (no C compiler at install time)")
    # Receipts, which name raw files (and so appear in partials lines), from a counter.
    ticket = iter(range(1, 1 << 30))
    monkeypatch.setattr(memory.uuid, "uuid4", lambda: uuid.UUID(int=next(ticket)))
    settings = Settings(data_dir=tmp_path)
    container = make_container(settings)
    clock = FakeClock(NOW)
    # Small messages, so the 1,000-reading hour is split over several envelopes.
    queue = MemoryQueue(clock=clock, max_message_bytes=64 * 1024)
    container.clock.override(providers.Object(clock))
    container.queue.override(providers.Object(queue))
    answers: list[bytes] = []
    with client_for(container, settings) as client:
        for label, body, headers in _requests():
            r = client.post(URL, content=body, headers=headers)
            assert r.status_code == 202, (label, r.text)
            answers.append(r.content)
    messages = [queue.messages[k].body for k in sorted(queue.messages)]
    storage = MemoryStorage()
    DrainBatches(queue, storage, clock, BatchPolicy()).until_empty()
    lake = sorted((k.encode(), v) for k, v in storage.objects.items())
    return {"answers": answers, "messages": messages,
            "lake": [x for kv in lake for x in kv], "keys": sorted(storage.objects)}


def test_reading_ids_are_those_of_before(outcome: dict[str, Any]) -> None:
    ids = [i.encode() for a in outcome["answers"]
           for i in msgspec.json.decode(a)["reading_ids"]]
    assert len(ids) == 100 + 120 + 30 + 40 + 60 + 25 + 1000
    assert _digest(ids) == GOLDEN_IDS
    # One id written out, so a change of the rule reads as such, not as a digest.
    one = Reading("car-1", datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC),
                  {"Vehicle.Speed": 1.5, "A": True, "B": "x"})
    assert derive_reading_id(one.vehicle_id, one.ts, one.signals) == GOLDEN_ONE_ID
    assert derive_reading_ids([one]) == [GOLDEN_ONE_ID]



def test_queue_messages_are_those_of_before(outcome: dict[str, Any]) -> None:
    assert len(outcome["messages"]) >= 10
    assert any(m.startswith(b'{"v":2,') for m in outcome["messages"])  # partials made
    assert _digest(outcome["messages"]) == GOLDEN_MESSAGES


def test_lake_is_that_of_before(outcome: dict[str, Any]) -> None:
    assert any(k.startswith("partials/") for k in outcome["keys"])
    assert _digest(outcome["lake"]) == GOLDEN_LAKE
