"""The compiled ingest kernel (`telemetry._ingestcore`) against the Python path it replaces.

Every property compares the kernel's reading ids, lake lines, event times and hour groups (and
`AcceptReadings`' whole answer: ids and queue messages) with the pure-Python path's, which
`readings.kernel = None` forces. Bad input to the kernel's parser gives None or an error,
never a crash. Skipped where the kernel is not built, except under TELEMETRY_REQUIRE_NATIVE.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from datetime import UTC, datetime, timedelta, timezone
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.adapters.memory import MemoryQueue
from telemetry.domain import readings as readings_module
from telemetry.domain.accept import Accepted, AcceptReadings
from telemetry.domain.readings import (
    Reading,
    ReadingRules,
    Record,
    derive_reading_ids,
    encode_records,
    epoch_ms,
    ids_and_lines,
)
from tests.support.fakes import FakeClock


def _kernel() -> ModuleType:
    try:
        return importlib.import_module("telemetry._ingestcore")
    except ImportError:
        if os.environ.get("TELEMETRY_REQUIRE_NATIVE"):
            raise
        pytest.skip("telemetry._ingestcore is not built (no C compiler at install time)")


@pytest.fixture
def core() -> ModuleType:
    return _kernel()


NOW = datetime(2026, 11, 29, 12, 0, 0, 250_000, tzinfo=UTC)

# Strings with what JSON must escape (quotes, backslashes, control characters), non-ASCII and
# astral characters, and the bytes the kernel looks for (braces, brackets, commas, colons).
_TEXT = st.text(st.one_of(st.characters(codec="utf-8"),
                          st.sampled_from('"\\\n\r\t\x00\x1f\x7f{}[],:é€😀')), max_size=12)
_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, 1e16, 0.1]),
    _TEXT,
)
_SIGNALS = st.dictionaries(_TEXT, _VALUES, min_size=1, max_size=6)
# Offsets of whole minutes (what a JSON or msgpack body can carry), and others the kernel must
# hand back: seconds in the offset, a zone whose offset changes.
_WHOLE_MINUTES = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))
_ZONES = st.one_of(st.just(UTC), _WHOLE_MINUTES)
_ODD_ZONES = st.one_of(
    _ZONES, st.builds(lambda s: timezone(timedelta(seconds=s)), st.integers(-86399, 86399)),
    st.just(ZoneInfo("Europe/Berlin")))


@st.composite
def _timestamps(draw: st.DrawFn, base: datetime, odd: bool = False) -> datetime:
    t = base + timedelta(hours=draw(st.integers(-4, 4)), minutes=draw(st.integers(0, 59)),
                         seconds=draw(st.integers(0, 59)))
    if draw(st.booleans()):
        t = t.replace(microsecond=draw(st.integers(0, 999_999)))
    else:
        t = t.replace(microsecond=0)
    return t.astimezone(draw(_ODD_ZONES if odd else _ZONES))


# Several hours in one request, sometimes far from now (the calendar's corners: years
# 1000-9999, leap days, before the epoch, the year 999 in UTC).
_ANY_TIME = st.one_of(
    st.just(NOW),
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC)),
    st.sampled_from([datetime(2000, 2, 29, 23, 59, tzinfo=UTC),
                     datetime(1969, 12, 31, 23, 30, tzinfo=UTC),
                     datetime(1000, 1, 1, 5, tzinfo=UTC),
                     datetime(9999, 12, 30, 18, tzinfo=UTC)]),
)
# What the rules let through at NOW: the last day, never later than now.
_RECENT = st.builds(lambda m: NOW - timedelta(hours=6, minutes=m), st.integers(0, 18 * 60))


@st.composite
def _requests(draw: st.DrawFn, bases: st.SearchStrategy[datetime] = _ANY_TIME) -> list[Reading]:
    base = draw(bases)
    vehicles = draw(st.lists(_TEXT.filter(bool), min_size=1, max_size=4))
    rid = st.one_of(st.none(), st.text("abcXYZ019_.:-", min_size=1, max_size=20),
                    st.text(min_size=1, max_size=8))
    odd = draw(st.integers(0, 4)) == 0  # now and then a zone the kernel hands back
    return [Reading(draw(st.sampled_from(vehicles)), draw(_timestamps(base, odd)),
                    draw(_SIGNALS), draw(rid))
            for _ in range(draw(st.integers(1, 25)))]


def _python_ids_and_lines(
    readings: list[Reading], received_at: datetime
) -> tuple[list[str], dict[int, tuple[bytes, list[int], list[int]]]]:
    """What the kernel must give, by the Python path's own functions."""
    derived = iter(derive_reading_ids([r for r in readings if r.reading_id is None]))
    ids = [r.reading_id if r.reading_id is not None else next(derived) for r in readings]
    hours: dict[int, tuple[list[Record], list[int], list[int]]] = {}
    for i, (r, rid) in enumerate(zip(readings, ids, strict=True)):
        ts = r.ts.astimezone(UTC)
        t_ms = epoch_ms(ts)
        recs, times, idx = hours.setdefault(t_ms // 3_600_000 * 3600, ([], [], []))
        recs.append(Record(rid, r.vehicle_id, ts, received_at, r.signals))
        times.append(t_ms)
        idx.append(i)
    return ids, {h: (encode_records(recs), t, idx) for h, (recs, t, idx) in hours.items()}


def _kernel_handles(readings: list[Reading]) -> bool:
    """Whether the kernel must take these readings (else it hands them back, None)."""
    for r in readings:
        off = r.ts.utcoffset()
        if not isinstance(r.ts.tzinfo, timezone) or off is None or off.seconds % 60:
            return False
        if not 1000 <= r.ts.astimezone(UTC).year <= 9999:
            return False
        # a given id that JSON would escape, or not ASCII (the contract's ids never are)
        if r.reading_id is not None and not (r.reading_id.isascii() and all(
                " " <= c < "\x7f" and c not in '"\\' for c in r.reading_id)):
            return False
        # a derived id of a signal name JSON would escape: the kernel sorts names by their bytes
        if r.reading_id is None and any(c < " " or c in '"\\' for n in r.signals for c in n):
            return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings=_requests(), received_offset=st.sampled_from([0, 0, 120, -330]))
def test_the_kernel_gives_the_python_paths_ids_and_lines(
    readings: list[Reading], received_offset: int
) -> None:
    _kernel()
    received_at = NOW.astimezone(timezone(timedelta(minutes=received_offset)))
    out = ids_and_lines(readings, received_at)
    if not _kernel_handles(readings):
        assert out is None
        return
    assert out is not None
    ids, hours = out
    want_ids, want_hours = _python_ids_and_lines(readings, received_at)
    assert ids == want_ids
    assert list(hours.items()) == list(want_hours.items())  # the hours' order too


def _accept(readings: list[Reading]) -> Accepted | str:
    queue = MemoryQueue(max_message_bytes=16 * 1024)
    rules = ReadingRules(max_lateness=timedelta(days=3650 * 30), max_hours=100)
    try:
        return AcceptReadings(queue, FakeClock(NOW), rules).execute(readings, None)
    except Exception as exc:  # the same refusal on both paths
        return f"{type(exc).__name__}: {exc}"


@st.composite
def _one_vehicle_requests(draw: st.DrawFn) -> list[Reading]:
    """Many readings of one vehicle, so their envelopes carry partials."""
    vid = draw(_TEXT.filter(bool))
    names = draw(st.lists(_TEXT, min_size=1, max_size=4, unique=True))
    return [Reading(vid, draw(_timestamps(NOW - timedelta(hours=6))),
                    {n: draw(_VALUES) for n in names}, draw(st.none() | st.just(f"id-{i}")))
            for i in range(draw(st.integers(10, 40)))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings=st.one_of(_requests(_RECENT), _one_vehicle_requests()))
def test_accept_answers_and_enqueues_the_same_with_and_without_the_kernel(
    readings: list[Reading],
) -> None:
    _kernel()
    with_kernel = _accept(readings)
    saved = readings_module.kernel
    readings_module.kernel = None
    try:
        without = _accept(readings)
    finally:
        readings_module.kernel = saved
    assert with_kernel == without


def test_the_forced_python_path_does_not_call_the_kernel(
    core: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readings_module, "kernel", None)
    r = Reading("car-1", NOW, {"a": 1})
    assert ids_and_lines([r], NOW) is None
    assert _accept([r]) == _accept([r])


def test_a_typical_request_goes_through_the_kernel(core: ModuleType) -> None:
    rs = [Reading(f"car-{i % 7}", NOW - timedelta(seconds=i), {"Vehicle.Speed": i / 3})
          for i in range(100)]
    out = ids_and_lines(rs, NOW)
    assert out is not None
    assert out[0] == derive_reading_ids(rs)


@pytest.mark.parametrize("n", [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000])
def test_sha256_is_hashlibs(core: ModuleType, n: int) -> None:
    data = bytes(range(256)) * 4 + b"x" * n
    assert core.sha256_hex(data[:n]) == hashlib.sha256(data[:n]).hexdigest()
    assert core.SHA256_BACKEND in ("openssl", "portable")


# ------------------------------------------------------------------ bad input


def _encodings(readings: list[Reading]) -> tuple[bytes, bytes]:
    return msgspec.json.Encoder().encode_lines(readings), msgspec.json.encode(NOW)


def _prepare(core: ModuleType, readings: list[Any], plain: Any, received: Any) -> None:
    try:
        out = core.prepare(readings, plain, received)
    except (TypeError, AttributeError, ValueError, OverflowError):
        return
    assert out is None or (isinstance(out, tuple) and len(out[0]) == len(readings))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings=_requests(), data=st.data())
def test_mangled_encodings_never_crash_the_kernel(readings: list[Reading],
                                                  data: st.DataObject) -> None:
    core = _kernel()
    parts = list(_encodings(readings))
    which = data.draw(st.integers(0, 1))
    b = bytearray(parts[which])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["cut", "flip", "insert", "drop"]))
        at = data.draw(st.integers(0, len(b)))
        if action == "cut":
            del b[at:]
        elif action == "flip" and at < len(b):
            b[at] = data.draw(st.sampled_from(b'"\\\n{}[],:Z+-.0 9\x00\xff'))
        elif action == "insert":
            b[at:at] = data.draw(st.binary(max_size=4))
        elif at < len(b):
            del b[at]
    parts[which] = bytes(b)
    _prepare(core, readings, *parts)


@settings(max_examples=300, deadline=None)
@given(plain=st.binary(max_size=300), received=st.binary(max_size=40), n=st.integers(0, 3))
def test_arbitrary_bytes_never_crash_the_kernel(plain: bytes, received: bytes, n: int) -> None:
    core = _kernel()
    readings = [Reading("v", NOW, {"a": 1}, None if i % 2 else "r") for i in range(n)]
    _prepare(core, readings, plain, received)


@pytest.mark.parametrize("value", [{"x": 1}, [1, "}"], {"a": {"b": [{}]}}, None])
def test_values_no_reading_holds_go_the_python_way_or_the_same(value: Any) -> None:
    # A Reading built in process is not validated: nested values must not confuse the kernel.
    _kernel()
    for rid in (None, "given"):
        rs = [Reading("v", NOW, {"b": value, "a": 1}, rid)]
        out = ids_and_lines(rs, NOW)
        assert out is None or out == _python_ids_and_lines(rs, NOW)


def test_arguments_of_the_wrong_kind_are_errors(core: ModuleType) -> None:
    plain, received = _encodings([Reading("v", NOW, {"a": 1})])
    with pytest.raises(TypeError):
        core.prepare((Reading("v", NOW, {"a": 1}),), plain, received)
    with pytest.raises(TypeError):
        core.prepare([Reading("v", NOW, {"a": 1})], "text", received)
    with pytest.raises(AttributeError):
        core.prepare([object()], plain, received)
