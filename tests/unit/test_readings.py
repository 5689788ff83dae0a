"""A reading (contract section 2): typed decoding, ReadingRules, describe_problems, ids, records."""

from __future__ import annotations

import hashlib
import math
import re
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from telemetry.domain.errors import Problem
from telemetry.domain.readings import (
    READING_ID_PATTERN,
    SIGNAL_NAME_PATTERN,
    Reading,
    ReadingBatch,
    ReadingRules,
    Record,
    WireBatch,
    WireReading,
    _KnownValid,
    canonical_ts,
    check_identifiers,
    decode_record,
    derive_reading_id,
    derive_reading_ids,
    describe_problems,
    encode_record,
    encode_records,
    hour_of,
    reading_id_of,
    to_record,
)
from tests.strategies import (
    DEFECTS,
    NOW,
    apply_defect,
    fuzzy_reading_objects,
    invalid_reading_objects,
    reading_objects,
    readings,
    signal_dicts,
    signal_values,
    utc_offsets,
)

_json_batch = msgspec.json.Decoder(ReadingBatch)
_msgpack_batch = msgspec.msgpack.Decoder(ReadingBatch)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD: dict[str, Any] = {
    "vehicle_id": "truck-001",
    "ts": "2026-11-29T01:02:03.456Z",
    "signals": {"Vehicle.Speed": 87.5, "Vehicle.Gear": 4, "Vehicle.IsMoving": True, "Note": "ok"},
}


def with_(**changes: Any) -> dict[str, Any]:
    """GOOD with some fields replaced; a value of `...` removes the field."""
    obj = {k: v for k, v in GOOD.items() if changes.get(k) is not ...}
    obj.update({k: v for k, v in changes.items() if v is not ...})
    return obj


def with_signal(name: str, value: Any) -> dict[str, Any]:
    return with_(signals={"Vehicle.Speed": 1.0, name: value})


def decode_json(obj: Any) -> ReadingBatch:
    return _json_batch.decode(msgspec.json.encode({"readings": [obj]}))


def decode_msgpack(obj: Any) -> ReadingBatch:
    return _msgpack_batch.decode(msgspec.msgpack.encode({"readings": [obj]}))


def msgpack_can_carry(obj: Any) -> bool:
    """msgpack has no integers below -(2**63) or above 2**64 - 1."""
    try:
        msgspec.msgpack.encode(obj)
    except OverflowError:
        return False
    return True


def fields(problems: list[Problem]) -> set[str]:
    return {p.field for p in problems}


# ---------------------------------------------------------------- typed decoding


def test_a_valid_batch_decodes_with_its_types_intact() -> None:
    body = msgspec.json.encode({"readings": [GOOD, with_(reading_id="given-1:a.b_c")]})
    batch = _json_batch.decode(body)
    first, second = batch.readings
    assert first.vehicle_id == "truck-001"
    assert first.ts == datetime(2026, 11, 29, 1, 2, 3, 456000, tzinfo=UTC)
    assert first.reading_id is None
    assert second.reading_id == "given-1:a.b_c"
    signals = first.signals
    assert type(signals["Vehicle.Speed"]) is float
    assert type(signals["Vehicle.Gear"]) is int
    assert signals["Vehicle.IsMoving"] is True
    assert signals["Note"] == "ok"


def test_a_valid_batch_decodes_from_msgpack_with_a_native_timestamp() -> None:
    obj = with_(ts=datetime(2026, 11, 29, 1, tzinfo=UTC))
    (r,) = decode_msgpack(obj).readings
    assert r.ts == datetime(2026, 11, 29, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "obj",
    [
        with_(vehicle_id="a" * 64),
        with_(vehicle_id="7"),
        with_(vehicle_id="Az09_.:-"),
        with_(ts="2026-11-29T03:02:03+02:00"),
        with_(ts="2026-11-28T20:02:03.123456-05:00"),
        with_signal("S" * 128, 1),
        with_signal("Vehicle.Cabin.Door.Row1.Left.IsOpen", False),
        with_signal("a.1._", 1),
        with_signal("Text", "é" * 256),
        with_signal("Big", 2**63 - 1),
        with_signal("Small", -(2**63)),
        with_signal("Max", 1.7976931348623157e308),
        with_(reading_id="r" * 128),
        with_(reading_id=None),  # explicit null: the same as absent
    ],
    ids=repr,
)
def test_boundary_values_are_accepted(obj: dict[str, Any]) -> None:
    assert len(decode_json(obj).readings) == 1
    assert describe_problems(0, obj) == []


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("vehicle_id trailing newline", with_(vehicle_id="truck-001\n"), "vehicle_id"),
    ("vehicle_id 65 chars", with_(vehicle_id="a" * 65), "vehicle_id"),
    ("vehicle_id empty", with_(vehicle_id=""), "vehicle_id"),
    ("vehicle_id leading dash", with_(vehicle_id="-truck"), "vehicle_id"),
    ("vehicle_id space", with_(vehicle_id="truck 1"), "vehicle_id"),
    ("vehicle_id non-ascii", with_(vehicle_id="lkw-ü"), "vehicle_id"),
    ("vehicle_id number", with_(vehicle_id=42), "vehicle_id"),
    ("vehicle_id missing", with_(vehicle_id=...), "vehicle_id"),
    ("ts without offset", with_(ts="2026-11-29T01:02:03"), "ts"),
    ("ts date only", with_(ts="2026-11-29"), "ts"),
    ("ts not a time", with_(ts="now"), "ts"),
    ("ts epoch number", with_(ts=1764378123), "ts"),
    ("ts missing", with_(ts=...), "ts"),
    ("signal null", with_signal("Vehicle.Fuel", None), "signals.Vehicle.Fuel"),
    ("signal nested object", with_signal("Vehicle", {"Speed": 1}), "signals.Vehicle"),
    ("signal array", with_signal("Vehicle.Pos", [1, 2]), "signals.Vehicle.Pos"),
    ("string of 257 chars", with_signal("Text", "x" * 257), "signals.Text"),
    ("int above int64", with_signal("Big", 2**63), "signals.Big"),
    ("int below int64", with_signal("Small", -(2**63) - 1), "signals.Small"),
    ("name of 129 chars", with_signal("S" * 129, 1), "signals." + "S" * 129),
    ("name starts with digit", with_signal("1abc", 1), "signals.1abc"),
    ("name starts with underscore", with_signal("_abc", 1), "signals._abc"),
    ("name empty segment", with_signal("Vehicle..Speed", 1), "signals.Vehicle..Speed"),
    ("name trailing dot", with_signal("Vehicle.", 1), "signals.Vehicle."),
    ("name leading dot", with_signal(".Speed", 1), "signals..Speed"),
    ("name dash", with_signal("Vehicle-Speed", 1), "signals.Vehicle-Speed"),
    ("name trailing newline", with_signal("Speed\n", 1), "signals.Speed\n"),
    ("name empty", with_signal("", 1), "signals."),
    ("signals empty", with_(signals={}), "signals"),
    ("signals an array", with_(signals=[["Speed", 1]]), "signals"),
    ("signals missing", with_(signals=...), "signals"),
    ("unknown field", with_(speed=3), "speed"),
    ("reading_id empty", with_(reading_id=""), "reading_id"),
    ("reading_id 129 chars", with_(reading_id="r" * 129), "reading_id"),
    ("reading_id space", with_(reading_id="a b"), "reading_id"),
    ("reading_id slash", with_(reading_id="a/b"), "reading_id"),
    ("reading_id trailing newline", with_(reading_id="abc\n"), "reading_id"),
    ("reading_id number", with_(reading_id=5), "reading_id"),
]


@pytest.mark.parametrize(
    ("obj", "field"), [(o, f) for _, o, f in INVALID], ids=[n for n, *_ in INVALID]
)
def test_each_static_rule_rejects_and_names_its_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_json(obj)
    if msgpack_can_carry(obj):
        with pytest.raises(msgspec.ValidationError):
            decode_msgpack(obj)
    problems = describe_problems(3, obj)
    assert fields(problems) == {field}
    assert all(p.index == 3 and p.message for p in problems)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_via_msgpack_are_rejected(value: float) -> None:
    obj = with_signal("Vehicle.Speed2", value)
    with pytest.raises(msgspec.ValidationError):
        decode_msgpack(obj)
    untyped = msgspec.msgpack.decode(msgspec.msgpack.encode(obj))
    assert fields(describe_problems(0, untyped)) == {"signals.Vehicle.Speed2"}


def test_a_naive_msgpack_datetime_is_rejected() -> None:
    obj = with_(ts=datetime(2026, 11, 29, 1, 2, 3))  # encoded without an offset
    with pytest.raises(msgspec.ValidationError):
        decode_msgpack(obj)
    assert fields(describe_problems(0, msgspec.msgpack.decode(msgspec.msgpack.encode(obj)))) == {
        "ts"
    }
    assert fields(describe_problems(0, {**GOOD, "ts": datetime(2026, 11, 29)})) == {"ts"}


def test_unknown_top_level_field_of_the_batch_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        _json_batch.decode(msgspec.json.encode({"readings": [GOOD], "extra": 1}))


# ---------------------------------------------------------------- describe_problems


def test_describe_problems_lists_every_problem_of_a_reading() -> None:
    obj = {
        "vehicle_id": "bad id",
        "ts": "2026-11-29T01:02:03",
        "reading_id": "",
        "signals": {
            "Vehicle.Speed": 3.5,  # fine
            "1st": 1,
            "Vehicle.Fuel": None,
            "Vehicle.Pos": {"lat": 1.0},
            "Text": "y" * 257,
            "Nan": math.nan,
        },
        "colour": "red",
        "speed": 1,
    }
    problems = describe_problems(7, obj)
    assert sorted(fields(problems)) == sorted(
        [
            "vehicle_id",
            "ts",
            "reading_id",
            "signals.1st",
            "signals.Vehicle.Fuel",
            "signals.Vehicle.Pos",
            "signals.Text",
            "signals.Nan",
            "colour",
            "speed",
        ]
    )
    assert len(problems) == 10  # one per broken rule, none twice
    assert {p.index for p in problems} == {7}


def test_describe_problems_on_something_that_is_not_an_object() -> None:
    for obj in (None, 3, "reading", [GOOD]):
        assert describe_problems(2, obj) == [Problem(2, "", "a reading must be an object")]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_reading_objects(), st.integers(0, 999))
def test_describe_problems_reports_exactly_the_broken_fields(
    case: tuple[dict[str, Any], frozenset[str]], index: int
) -> None:
    obj, expected = case
    problems = describe_problems(index, obj)
    assert fields(problems) == expected
    assert len(problems) == len(expected)
    assert all(p.index == index for p in problems)


@FAST
@given(reading_objects())
def test_valid_objects_have_no_problems(obj: dict[str, Any]) -> None:
    assert describe_problems(0, obj) == []
    (r,) = decode_json(obj).readings
    assert r.vehicle_id == obj["vehicle_id"]
    assert r.signals == obj["signals"]
    assert ReadingRules().check([r], NOW) == []


def validators_agree(obj: Any, wire: str) -> bool | None:
    """Whether the fast validator (msgspec) and the slow one (describe_problems) agree on
    `obj` sent as `wire`; None when the wire cannot carry it (msgpack has no int beyond 64
    bits)."""
    codec: Any = msgspec.json if wire == "json" else msgspec.msgpack
    try:
        body = codec.encode({"readings": [obj]})
    except OverflowError:
        return None
    untyped = codec.decode(body)["readings"][0]
    try:
        codec.decode(body, type=ReadingBatch)
        typed_ok = True
    except msgspec.ValidationError:
        typed_ok = False
    return typed_ok == (not describe_problems(0, untyped))


LISTED = [
    pytest.param(apply_defect(GOOD, where, value), wire, id=f"{where}-{i}-{wire}")
    for i, (where, value) in enumerate(DEFECTS)
    for wire in ("json", "msgpack")
    if wire == "json" or msgpack_can_carry(apply_defect(GOOD, where, value))
]


@pytest.mark.parametrize(("obj", "wire"), LISTED)
def test_validators_agree_on_every_listed_defect(obj: dict[str, Any], wire: str) -> None:
    assert validators_agree(obj, wire), describe_problems(0, obj)


@pytest.mark.parametrize("wire", ["json", "msgpack"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=fuzzy_reading_objects())
def test_validators_agree_on_any_generated_object(obj: Any, wire: str) -> None:
    agree = validators_agree(obj, wire)
    assume(agree is not None)
    assert agree, describe_problems(0, obj)


# ---------------------------------------------------------------- ReadingRules


def reading_at(ts: datetime, n_signals: int = 1) -> Reading:
    return Reading("truck-1", ts, {f"S{i}": i for i in range(n_signals)})


# Rules that reach back to 2000, and let one request span the decades in between.
WIDE = ReadingRules(max_lateness=timedelta(days=365 * 100), max_hours=10**9)


def test_rules_accept_the_window_edges() -> None:
    rules = WIDE
    ok = [
        reading_at(datetime(2000, 1, 1, tzinfo=UTC)),
        reading_at(datetime(2000, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        reading_at(NOW + timedelta(seconds=300)),
        reading_at(NOW, n_signals=256),
    ]
    assert rules.check(ok, NOW) == []


def test_rules_reject_a_reading_before_2000() -> None:
    rules = WIDE
    early = [
        reading_at(datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        # 00:30 at +01:00 is 1999-12-31T23:30Z: the instant counts, not the wall clock
        reading_at(datetime(2000, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))),
        reading_at(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
    ]
    problems = rules.check([reading_at(NOW), *early], NOW)
    assert [(p.index, p.field) for p in problems] == [(1, "ts"), (2, "ts"), (3, "ts")]


def test_rules_reject_a_reading_beyond_now_plus_skew() -> None:
    late = NOW + timedelta(seconds=300, microseconds=1)
    assert [(p.index, p.field) for p in ReadingRules().check([reading_at(late)], NOW)] == [
        (0, "ts")
    ]
    # the far future, written with a negative offset, must not overflow
    far = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1)))
    assert fields(ReadingRules().check([reading_at(far)], NOW)) == {"ts"}
    strict = ReadingRules(max_clock_skew=timedelta(0))
    assert fields(strict.check([reading_at(NOW + timedelta(microseconds=1))], NOW)) == {"ts"}
    assert strict.check([reading_at(NOW)], NOW) == []


def test_rules_reject_too_many_signals() -> None:
    problems = ReadingRules().check([reading_at(NOW), reading_at(NOW, n_signals=257)], NOW)
    assert [(p.index, p.field) for p in problems] == [(1, "signals")]
    small = ReadingRules(max_signals=2)
    assert small.check([reading_at(NOW, n_signals=2)], NOW) == []
    assert fields(small.check([reading_at(NOW, n_signals=3)], NOW)) == {"signals"}


def test_rules_reject_an_empty_batch() -> None:
    assert [(p.index, p.field) for p in ReadingRules().check([], NOW)] == [(-1, "readings")]


def test_rules_reject_a_batch_over_max() -> None:
    rules = ReadingRules(max_batch=3)
    assert rules.check([reading_at(NOW)] * 3, NOW) == []
    problems = rules.check([reading_at(NOW)] * 4, NOW)
    assert [(p.index, p.field) for p in problems] == [(-1, "readings")]
    assert "4" in problems[0].message


def test_rules_report_every_broken_reading_with_its_index() -> None:
    rules = ReadingRules(max_signals=1)
    batch = [
        reading_at(NOW),
        reading_at(datetime(1990, 1, 1, tzinfo=UTC), n_signals=2),
        reading_at(NOW),
        reading_at(NOW + timedelta(hours=1)),
    ]
    problems = rules.check(batch, NOW)
    assert sorted((p.index, p.field) for p in problems) == [(1, "signals"), (1, "ts"), (3, "ts")]


# ---------------------------------------------------------------- reading ids

# Pinned: a change in the canonical encoding changes every derived id, which breaks the
# idempotence of retries across versions. Do not update these without an ADR.
GOLDEN = [
    (
        "truck-001",
        datetime(2026, 11, 29, 1, 2, 3, 456789, tzinfo=UTC),
        {
            "Vehicle.Speed": 87.5,
            "Vehicle.Powertrain.Gear": 4,
            "Vehicle.IsMoving": True,
            "Vehicle.Driver.Name": "Zoë",
        },
        b'["truck-001","2026-11-29T01:02:03.456789Z",{"Vehicle.Driver.Name":"Zo\xc3\xab",'
        b'"Vehicle.IsMoving":true,"Vehicle.Powertrain.Gear":4,"Vehicle.Speed":87.5}]',
        "b98b3742e382979e37c369ad92640026",
    ),
    (
        "v1",
        datetime(2026, 3, 1, 0, 0, tzinfo=timezone(timedelta(hours=2))),
        {"a": 0.1},
        b'["v1","2026-02-28T22:00:00.000000Z",{"a":0.1}]',
        "fff50b5eeba35db0341d1f25de1586ca",
    ),
    (
        "x",
        datetime(2000, 1, 1, tzinfo=UTC),
        {"n": -9223372036854775808, "f": 1e-300, "s": "", "z": -0.0},
        b'["x","2000-01-01T00:00:00.000000Z",{"f":1e-300,"n":-9223372036854775808,"s":"",'
        b'"z":-0.0}]',
        "d268578af0b715f659c3639bb2f4535d",
    ),
]


@pytest.mark.parametrize(("vid", "ts", "signals", "payload", "expected"), GOLDEN)
def test_derived_reading_id_golden_vectors(
    vid: str, ts: datetime, signals: dict[str, Any], payload: bytes, expected: str
) -> None:
    assert derive_reading_id(vid, ts, signals) == expected
    # ...and it is what the docstring documents, so other tools can recompute it
    documented = hashlib.sha256(b"telemetry.reading.v1\n" + payload).hexdigest()[:32]
    assert documented == expected


def test_the_same_instant_with_another_offset_gets_the_same_id() -> None:
    signals = {"Vehicle.Speed": 50.0}
    utc = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    plus2 = datetime(2026, 11, 29, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    minus = datetime(2026, 11, 28, 19, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))
    ids = {derive_reading_id("v", t, signals) for t in (utc, plus2, minus)}
    assert len(ids) == 1
    # decoded from the wire too
    a = decode_json(with_(ts="2026-11-29T03:00:00+02:00", signals=signals)).readings[0]
    b = decode_json(with_(ts="2026-11-29T01:00:00Z", signals=signals)).readings[0]
    assert reading_id_of(a) == reading_id_of(b)
    assert derive_reading_id("v", utc + timedelta(microseconds=1), signals) not in ids


@FAST
@given(readings(), st.data())
def test_any_change_of_a_signal_changes_the_id(r: Reading, data: st.DataObject) -> None:
    base = derive_reading_id(r.vehicle_id, r.ts, r.signals)
    name = data.draw(st.sampled_from(sorted(r.signals)))
    value = data.draw(signal_values())
    old = r.signals[name]
    # a "change" is anything the lake line would show differently: 1 vs 1.0 vs True included
    assume(msgspec.json.encode(value) != msgspec.json.encode(old))
    changed = {**r.signals, name: value}
    assert derive_reading_id(r.vehicle_id, r.ts, changed) != base
    renamed = {(k + "x" if k == name else k): v for k, v in r.signals.items()}
    assert derive_reading_id(r.vehicle_id, r.ts, renamed) != base
    added = {**r.signals, "Zz" + name: 0}
    assert derive_reading_id(r.vehicle_id, r.ts, added) != base
    assert derive_reading_id(r.vehicle_id + "x", r.ts, r.signals) != base


@FAST
@given(readings(), st.randoms(use_true_random=False))
def test_the_key_order_of_signals_does_not_matter(r: Reading, rnd: Any) -> None:
    items = list(r.signals.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert derive_reading_id(r.vehicle_id, r.ts, shuffled) == derive_reading_id(
        r.vehicle_id, r.ts, r.signals
    )


def test_a_given_reading_id_wins_and_a_derived_one_is_valid() -> None:
    r = decode_json(with_(reading_id="mine")).readings[0]
    assert reading_id_of(r) == "mine"
    derived = reading_id_of(decode_json(GOOD).readings[0])
    assert len(derived) == 32
    assert set(derived) <= set("0123456789abcdef")
    assert decode_json(with_(reading_id=derived)).readings[0].reading_id == derived


def reference_canonical_ts(ts: datetime) -> str:
    """The derivation as first written (and documented), the oracle for faster versions."""
    u = ts.astimezone(UTC)
    return f"{u:%Y-%m-%dT%H:%M:%S}.{u.microsecond:06d}Z"


def reference_reading_id(vehicle_id: str, ts: datetime, signals: dict[str, Any]) -> str:
    payload = msgspec.json.Encoder(order="sorted").encode(
        [vehicle_id, reference_canonical_ts(ts), signals]
    )
    return hashlib.sha256(b"telemetry.reading.v1\n" + payload).hexdigest()[:32]


any_instant = st.builds(
    lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    utc_offsets(),
)


@FAST
@given(readings(), any_instant)
def test_derived_ids_follow_the_documented_derivation(r: Reading, instant: datetime) -> None:
    assert derive_reading_id(r.vehicle_id, r.ts, r.signals) == reference_reading_id(
        r.vehicle_id, r.ts, r.signals
    )
    assert canonical_ts(instant) == reference_canonical_ts(instant)
    assert derive_reading_id("v", instant, r.signals) == reference_reading_id(
        "v", instant, r.signals
    )
    whole_second = instant.replace(microsecond=0)
    assert canonical_ts(whole_second) == reference_canonical_ts(whole_second)
    assert derive_reading_id("v", whole_second, {"x": 1}) == reference_reading_id(
        "v", whole_second, {"x": 1}
    )


def test_canonical_ts_has_one_spelling_per_instant() -> None:
    t = datetime(2026, 11, 29, 3, 4, 5, 60, tzinfo=timezone(timedelta(hours=2)))
    assert canonical_ts(t) == "2026-11-29T01:04:05.000060Z"
    assert canonical_ts(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z"


def test_hour_of_is_the_start_of_the_utc_hour() -> None:
    t = datetime(2026, 11, 29, 0, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-1)))
    assert hour_of(t) == datetime(2026, 11, 29, 1, tzinfo=UTC)
    assert hour_of(t).tzinfo == UTC


# ---------------------------------------------------------------- lake records


def float_bits(v: float) -> bytes:
    return struct.pack("<d", v)


@FAST
@given(readings(), st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)))
def test_any_valid_reading_survives_the_record_encoding(r: Reading, received: datetime) -> None:
    rid = reading_id_of(r)
    line = encode_record(to_record(r, rid, received))
    back = decode_record(line)
    assert back.reading_id == rid
    assert back.vehicle_id == r.vehicle_id
    assert back.ts == r.ts  # the same instant...
    assert back.ts.utcoffset() == timedelta(0)  # ...in UTC
    assert back.received_at == received
    assert back.signals.keys() == r.signals.keys()
    for name, value in r.signals.items():
        got = back.signals[name]
        assert type(got) is type(value), name  # ints stay ints, bools stay bools
        if isinstance(value, float):
            assert float_bits(got) == float_bits(value), name  # exact, -0.0 included
        else:
            assert got == value, name
    assert decode_record(encode_record(back)) == back


def test_a_record_line_is_the_documented_json_object() -> None:
    r = Reading(
        "truck-1",
        datetime(2026, 11, 29, 3, 0, 0, 120000, tzinfo=timezone(timedelta(hours=2))),
        {"Vehicle.Speed": 1.0, "Vehicle.Gear": 3, "On": True, "Mode": "eco"},
    )
    received = datetime(2026, 11, 29, 1, 0, 1, tzinfo=UTC)
    line = encode_record(to_record(r, "rid-1", received))
    assert msgspec.json.decode(line) == {
        "reading_id": "rid-1",
        "vehicle_id": "truck-1",
        "ts": "2026-11-29T01:00:00.120000Z",
        "received_at": "2026-11-29T01:00:01Z",
        "signals": {"Vehicle.Speed": 1.0, "Vehicle.Gear": 3, "On": True, "Mode": "eco"},
    }
    assert list(msgspec.json.decode(line)) == [
        "reading_id",
        "vehicle_id",
        "ts",
        "received_at",
        "signals",
    ]
    assert b"\n" not in line
    assert isinstance(decode_record(line), Record)


@FAST
@given(signal_dicts())
def test_a_record_line_holds_no_newline(signals: dict[str, Any]) -> None:
    """JSON Lines: string values with newlines must come out escaped."""
    r = Reading("v", NOW, signals)
    assert b"\n" not in encode_record(to_record(r, "r", NOW))


# ---------------------------------------------------------------- the ingest fast path


def fast_path_agrees(obj: Any, wire: str) -> bool | None:
    """Whether ingest's fast path (`WireBatch` without patterns, then `check_identifiers`) takes
    exactly what `ReadingBatch` takes; None when the wire cannot carry `obj`."""
    codec: Any = msgspec.json if wire == "json" else msgspec.msgpack
    try:
        body = codec.encode({"readings": [obj]})
    except OverflowError:
        return None
    try:
        codec.decode(body, type=ReadingBatch)
        full_ok = True
    except msgspec.ValidationError:
        full_ok = False
    try:
        check_identifiers(codec.decode(body, type=WireBatch).readings, "$.readings")
        fast_ok = True
    except msgspec.ValidationError:
        fast_ok = False
    return full_ok == fast_ok


@pytest.mark.parametrize(("obj", "wire"), LISTED)
def test_the_fast_path_agrees_on_every_listed_defect(obj: dict[str, Any], wire: str) -> None:
    # Twice: the second time the names come from the cache of valid names.
    assert fast_path_agrees(obj, wire)
    assert fast_path_agrees(obj, wire)


@pytest.mark.parametrize("wire", ["json", "msgpack"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=fuzzy_reading_objects())
def test_the_fast_path_agrees_on_any_generated_object(obj: Any, wire: str) -> None:
    agree = fast_path_agrees(obj, wire)
    assume(agree is not None)
    assert agree


def test_the_fast_path_raises_what_msgspec_raises_for_a_pattern() -> None:
    bad = [with_(vehicle_id="-truck"), with_signal("9lives", 1), with_(reading_id="a b")]
    for i, obj in enumerate(bad):
        body = msgspec.json.encode({"readings": [GOOD, obj]})
        with pytest.raises(msgspec.ValidationError) as full:
            _json_batch.decode(body)
        with pytest.raises(msgspec.ValidationError) as fast:
            check_identifiers(msgspec.json.decode(body, type=WireBatch).readings, "$.readings")
        assert str(fast.value) == str(full.value), i


@given(st.text(alphabet=st.characters(max_codepoint=0x7F) | st.sampled_from("é\n\u2028")))
def test_the_reading_id_check_is_the_pattern(rid: str) -> None:
    assume(1 <= len(rid) <= 128)
    r = WireReading("car-1", NOW, {"x": 1}, rid)
    try:
        check_identifiers([r], "$")
        ok = True
    except msgspec.ValidationError:
        ok = False
    assert ok == bool(re.search(READING_ID_PATTERN, rid))


def test_the_cache_of_valid_names_is_bounded() -> None:
    known = _KnownValid(SIGNAL_NAME_PATTERN, 100)
    assert known.learn(f"S{i}" for i in range(1000))
    assert len(known.ok) <= 100
    assert not known.learn(["ok", "9bad"])
    assert "9bad" not in known.ok


@FAST
@given(st.lists(readings(), max_size=8), st.lists(any_instant, max_size=8))
def test_ids_derived_together_are_the_ids_derived_one_by_one(
    rs: list[Reading], instants: list[datetime]
) -> None:
    # Instants of any year and offset, with and without a fraction of a second.
    rs = rs + [Reading("car-1", t, {"x": 1}) for t in instants]
    assert derive_reading_ids(rs) == [derive_reading_id(r.vehicle_id, r.ts, r.signals) for r in rs]


@FAST
@given(st.lists(readings(), max_size=8), st.datetimes(timezones=st.just(UTC)))
def test_records_encoded_together_are_the_lines_one_by_one(
    rs: list[Reading], received: datetime
) -> None:
    records = [to_record(r, reading_id_of(r), received) for r in rs]
    assert encode_records(records) == b"".join(encode_record(r) + b"\n" for r in records)


def test_rules_reject_a_reading_older_than_the_maximum_lateness() -> None:
    rules = ReadingRules(max_lateness=timedelta(days=35))
    edge = NOW - timedelta(days=35)
    problems = rules.check([reading_at(edge), reading_at(edge - timedelta(microseconds=1))], NOW)
    assert [(p.index, p.field, p.message) for p in problems] == [
        (1, "ts", "older than the maximum lateness of 35 days")]


def test_rules_cap_the_event_time_hours_of_one_request() -> None:
    rules = ReadingRules(max_hours=3)
    assert rules.hours_problem(3) is None
    problem = rules.hours_problem(4)
    assert problem is not None and (problem.index, problem.field) == (-1, "readings")
    assert "span 4 hours" in problem.message and "split it" in problem.message


def test_rules_reject_a_repeated_identity_naming_both_indexes() -> None:
    r = Reading("car-77", NOW, {"v": 1}, reading_id="car-77:1")
    other = Reading("truck-1", NOW, {"v": 2}, reading_id="car-77:1")  # another vehicle's: fine
    derived = Reading("car-77", NOW, {"v": 3})
    (problem,) = ReadingRules().check([r, other, derived, derived, r], NOW)
    assert (problem.index, problem.field) == (4, "reading_id")
    assert "readings 0 and 4" in problem.message
