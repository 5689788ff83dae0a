"""Shared hypothesis strategies for readings (contract section 2) and lake records.

- valid input: `vehicle_ids`, `signal_names`, `signal_values`, `signal_dicts`, `timestamps`,
  `reading_ids`, `reading_objects` (the wire shape, as `msgspec.json/msgpack.decode` returns it)
  and `readings` (typed `Reading`s that pass every rule at `NOW`);
- invalid input: `invalid_reading_objects` draws `(obj, fields)`, a reading that breaks one or
  more rules, with the exact set of `Problem.field`s `describe_problems` must report;
  `DEFECTS` lists single defects one step from a rule (either side of it), `NEAR_MISSES`
  generates more, `apply_defect` puts one into a reading, and `fuzzy_reading_objects` draws
  valid readings, readings with one defect and non-objects, unlabelled, for properties that
  compare two validators;
- lake records: `records` (one hour, small pools of vehicles and signal names, so aggregates
  collide), `distinct_records`, `numeric_values`, and `VALUE_POOLS` (small pools that make
  ties, order-dependent rounding and sums beyond the float range frequent).

Strategy factories are cached (`functools.cache`): building a strategy costs more than drawing
from it, so build them once (at module level) rather than inside a composite.
"""

from __future__ import annotations

import functools
import math
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from telemetry.domain.readings import (
    MAX_READING_ID,
    MAX_SIGNAL_NAME,
    MAX_STRING_VALUE,
    MAX_VEHICLE_ID,
    Reading,
    Record,
)

# The "now" that tests pass to ReadingRules.check: valid readings are never later than this.
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
FLOAT_MAX = 1.7976931348623157e308

ALNUM = string.ascii_letters + string.digits
VEHICLE_CHARS = ALNUM + "_.:-"
NAME_CHARS = ALNUM + "_"
READING_ID_CHARS = ALNUM + "_.:-"


# ---------------------------------------------------------------- valid pieces


@functools.cache
def vehicle_ids(max_size: int = MAX_VEHICLE_ID) -> st.SearchStrategy[str]:
    """`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`, 1..max_size chars."""
    return st.builds(
        str.__add__, st.sampled_from(ALNUM), st.text(VEHICLE_CHARS, max_size=max_size - 1)
    )


@functools.cache
@st.composite
def signal_names(draw: st.DrawFn, max_size: int = MAX_SIGNAL_NAME) -> str:
    """VSS-style dotted names; sometimes padded to exactly `max_size` chars."""
    head = draw(st.sampled_from(string.ascii_letters)) + draw(st.text(NAME_CHARS, max_size=12))
    segments = draw(st.lists(st.text(NAME_CHARS, min_size=1, max_size=12), max_size=3))
    name = ".".join([head, *segments])[:max_size]
    if draw(st.integers(0, 9)) == 0:  # the length boundary, now and then
        name += "_" * (max_size - len(name))
    return name.rstrip(".")


@functools.cache
def ints64() -> st.SearchStrategy[int]:
    return st.integers(INT64_MIN, INT64_MAX)


@functools.cache
def finite_floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False)


@functools.cache
def signal_values() -> st.SearchStrategy[bool | int | float | str]:
    return st.one_of(
        st.booleans(),
        ints64(),
        finite_floats(),
        st.text(max_size=MAX_STRING_VALUE),
        st.text(max_size=MAX_STRING_VALUE).map(lambda s: s.ljust(MAX_STRING_VALUE, "x")),
    )


@functools.cache
def signal_dicts(max_size: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(signal_names(), signal_values(), min_size=1, max_size=max_size)


@functools.cache
def utc_offsets() -> st.SearchStrategy[timezone]:
    """Whole-minute offsets RFC 3339 can spell: -23:59..+23:59."""
    return st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


# The default window of `timestamps`: within the service's maximum lateness of `NOW`, and fewer
# event-time hours than one request may span, so any list of them makes a valid request.
RECENT = NOW - timedelta(hours=20)


@functools.cache
def timestamps(
    min_value: datetime = RECENT, max_value: datetime = NOW
) -> st.SearchStrategy[datetime]:
    """Aware datetimes between two instants, written with a random UTC offset."""
    return st.builds(
        lambda instant, tz: instant.replace(tzinfo=UTC).astimezone(tz),
        st.datetimes(
            min_value=min_value.astimezone(UTC).replace(tzinfo=None),
            max_value=max_value.astimezone(UTC).replace(tzinfo=None),
        ),
        utc_offsets(),
    )


def rfc3339(ts: datetime, z: bool = False) -> str:
    text = ts.isoformat()
    return text.replace("+00:00", "Z") if z else text


@functools.cache
def reading_ids() -> st.SearchStrategy[str]:
    return st.text(READING_ID_CHARS, min_size=1, max_size=MAX_READING_ID)


@functools.cache
@st.composite
def reading_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid reading as a decoded, untyped JSON object."""
    obj: dict[str, Any] = {
        "vehicle_id": draw(vehicle_ids()),
        "ts": rfc3339(draw(timestamps()), z=draw(st.booleans())),
        "signals": draw(signal_dicts()),
    }
    if draw(st.booleans()):
        obj["reading_id"] = draw(reading_ids())
    return obj


@functools.cache
def readings(
    ts: st.SearchStrategy[datetime] | None = None,
    vehicles: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Reading]:
    """Typed readings that pass decoding and `ReadingRules().check(..., NOW)`."""
    return st.builds(
        Reading,
        vehicle_id=vehicles if vehicles is not None else vehicle_ids(),
        ts=ts if ts is not None else timestamps(),
        signals=signal_dicts(),
        reading_id=st.none() | reading_ids(),
    )


# ---------------------------------------------------------------- invalid readings

_BAD_VEHICLE_IDS = st.one_of(
    st.sampled_from(["", "-a", "_a", ".a", "a b", "a/b", "a\n", "v1\n", "\nv1", "é", "a*", "a\t"]),
    st.just("a" * (MAX_VEHICLE_ID + 1)),
    st.builds(lambda v, c: v + c, vehicle_ids(max_size=20), st.sampled_from(" \n/*#é+\x00")),
    st.sampled_from([1, 1.5, True, ["v1"], {"id": "v1"}]),
)

_BAD_TS = st.one_of(
    st.sampled_from(
        [
            "2026-11-29T01:00:00",  # no offset
            "2026-11-29T01:00:00.5",
            "2026-11-29",
            "2026-13-01T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T01:00:00+24:00",
            "yesterday",
            "",
            "2026-11-29T01:00:00Z\n",
        ]
    ),
    st.sampled_from([0, 1764378000, 1.5, True, ["2026-11-29T01:00:00Z"]]),
)

_BAD_READING_IDS = st.one_of(
    st.sampled_from(["", "a b", "a\n", "é", "a/b", "a*"]),
    st.just("r" * (MAX_READING_ID + 1)),
    st.sampled_from([7, 1.5, False, ["r"]]),
)

_BAD_NAMES = st.one_of(
    st.sampled_from(
        ["", "1a", "_a", ".a", "a.", "a..b", "a-b", "a b", "a\n", "Vehicle.Speed\n", "é", "a.b."]
    ),
    st.just("A" * (MAX_SIGNAL_NAME + 1)),
    st.just("Vehicle." + "x" * (MAX_SIGNAL_NAME - 7)),  # 129 chars, dotted
)

_BAD_VALUES = st.one_of(
    st.none(),  # null
    st.just({"nested": 1}),
    st.just({}),
    st.just([1, 2]),
    st.just([]),
    st.just("x" * (MAX_STRING_VALUE + 1)),
    st.text(min_size=MAX_STRING_VALUE + 1, max_size=MAX_STRING_VALUE + 3),
    st.sampled_from([INT64_MAX + 1, INT64_MIN - 1, 2**64 - 1, 10**30]),
)

_BAD_SIGNALS = st.sampled_from([{}, [], "speed=1", 1, [["a", 1]]])


@functools.cache
@st.composite
def invalid_reading_objects(draw: st.DrawFn) -> tuple[dict[str, Any], frozenset[str]]:
    """A reading breaking 1..n rules, and the `Problem.field` of each broken rule.

    Each broken rule sits in its own field (or its own signal), so the expected set is exact.
    """
    obj = draw(reading_objects())
    fields: set[str] = set()
    kinds = draw(
        st.sets(
            st.sampled_from(
                [
                    "vehicle_id",
                    "no_vehicle_id",
                    "ts",
                    "no_ts",
                    "reading_id",
                    "unknown",
                    "signals",
                    "no_signals",
                    "signal_name",
                    "signal_value",
                ]
            ),
            min_size=1,
        )
    )
    # one slot, one rule: drop the combinations that would touch a field twice
    for a, b in [
        ("vehicle_id", "no_vehicle_id"),
        ("ts", "no_ts"),
        ("signals", "no_signals"),
        ("signals", "signal_name"),
        ("signals", "signal_value"),
        ("no_signals", "signal_name"),
        ("no_signals", "signal_value"),
    ]:
        if a in kinds and b in kinds:
            kinds.discard(b)
    if "vehicle_id" in kinds:
        obj["vehicle_id"] = draw(_BAD_VEHICLE_IDS)
        fields.add("vehicle_id")
    if "no_vehicle_id" in kinds:
        del obj["vehicle_id"]
        fields.add("vehicle_id")
    if "ts" in kinds:
        obj["ts"] = draw(_BAD_TS)
        fields.add("ts")
    if "no_ts" in kinds:
        del obj["ts"]
        fields.add("ts")
    if "reading_id" in kinds:
        obj["reading_id"] = draw(_BAD_READING_IDS)
        fields.add("reading_id")
    if "unknown" in kinds:
        name = draw(st.sampled_from(["extra", "Vehicle_id", "readingId", "signal", "", "ts "]))
        obj[name] = draw(st.sampled_from([1, None, "x", {}]))
        fields.add(name)
    if "signals" in kinds:
        obj["signals"] = draw(_BAD_SIGNALS)
        fields.add("signals")
    if "no_signals" in kinds:
        del obj["signals"]
        fields.add("signals")
    if "signal_name" in kinds:
        name = draw(_BAD_NAMES.filter(lambda n: n not in obj["signals"]))
        obj["signals"] = {**obj["signals"], name: draw(signal_values())}
        fields.add(f"signals.{name}")
    if "signal_value" in kinds:
        good = draw(signal_names().filter(lambda n: f"signals.{n}" not in fields))
        obj["signals"] = {**obj["signals"], good: draw(_BAD_VALUES)}
        fields.add(f"signals.{good}")
    return obj, frozenset(fields)


# One step away from a rule of section 2, on either side of it (several are valid after all:
# a value at a boundary, a native timestamp). (where, value): where is a field, "signal_name",
# "signal_value", "unknown" (a field name) or "missing" (the field to drop).
DEFECTS: list[tuple[str, Any]] = [
    *(
        ("vehicle_id", v)
        for v in ["", "-a", "a b", "a\n", "\nv1", "é", "a*", "a" * 64, "a" * 65, 1, None, ["v1"]]
    ),
    *(
        ("ts", v)
        for v in [
            "2026-11-29T01:00:00",
            "2026-11-29T01:00:00+24:00",
            "2026-11-29T01:00:00+23:59",
            "2026-11-29T24:00:00Z",
            "2026-11-29T01:00:00Z\n",
            "2026-11-29 01:00:00Z",
            datetime(2026, 11, 29, 1, tzinfo=UTC),  # msgpack's timestamp extension
            datetime(2026, 11, 29, 1),  # naive
            1764378000,
            None,
        ]
    ),
    *(("reading_id", v) for v in ["", "a b", "a\n", "é", "r" * 128, "r" * 129, 7, None]),
    *(
        ("signal_name", v)
        for v in ["", "1a", "_a", "a.", "a..b", "a-b", "a\n", "A" * 128, "A" * 129]
    ),
    *(
        ("signal_value", v)
        for v in [
            None,
            {"nested": 1},
            [1, 2],
            b"\x00",
            math.nan,
            math.inf,
            -math.inf,
            FLOAT_MAX,
            -FLOAT_MAX,
            "x" * 256,
            "x" * 257,
            INT64_MAX,
            INT64_MAX + 1,
            INT64_MIN,
            INT64_MIN - 1,
            2**64 - 1,
            10**30,
        ]
    ),
    *(("signals", v) for v in [{}, [], "speed=1", None]),
    *(("unknown", v) for v in ["extra", "readingId", ""]),
    *(("missing", v) for v in ["vehicle_id", "ts", "signals", "reading_id"]),
]


def _around(limit: int, alphabet: str, head: str | None = None) -> st.SearchStrategy[str]:
    """Strings of limit-1 .. limit+1 chars: either side of a length rule."""
    first = head if head is not None else alphabet
    return st.integers(limit - 1, limit + 1).flatmap(
        lambda n: st.builds(
            str.__add__, st.sampled_from(first), st.text(alphabet, min_size=n - 1, max_size=n - 1)
        )
    )


def _spoiled(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value with one odd character put in (or none): at the end (where `$` lets a
    newline through), at the start, or anywhere."""
    return st.builds(
        lambda v, c, at: v + c if at < 0 else v[: at % (len(v) + 1)] + c + v[at % (len(v) + 1) :],
        valid,
        st.sampled_from(["", " ", "\n", "\t", "é", "*", "/", "-", ".", "_", "\x00"]),
        st.one_of(st.just(-1), st.just(0), st.integers(0, 200)),
    )


# The same places, with generated values near the rules: at a length limit, or one character
# away from the pattern.
NEAR_MISSES: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("vehicle_id", _around(MAX_VEHICLE_ID, VEHICLE_CHARS, ALNUM)),
    ("vehicle_id", _spoiled(vehicle_ids(max_size=10))),
    ("ts", timestamps()),
    ("ts", st.datetimes()),
    ("ts", st.text("0123456789-:TZ+. ", max_size=30)),
    ("ts", _spoiled(timestamps().map(rfc3339))),
    ("reading_id", _around(MAX_READING_ID, READING_ID_CHARS)),
    ("reading_id", _spoiled(st.text(READING_ID_CHARS, max_size=10))),
    ("signal_name", _around(MAX_SIGNAL_NAME, NAME_CHARS + ".", string.ascii_letters)),
    ("signal_name", _spoiled(signal_names())),
    ("signal_value", st.floats()),
    ("signal_value", st.integers(INT64_MIN - 2, INT64_MAX + 2)),
    ("signal_value", _around(MAX_STRING_VALUE, "xé😀")),
]


def apply_defect(obj: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    """A copy of the reading object `obj` with one defect put in."""
    out = dict(obj)
    if where == "signal_name":
        out["signals"] = {**obj["signals"], value: 1}
    elif where == "signal_value":
        out["signals"] = {**obj["signals"], "Defect.Value": value}
    elif where == "unknown":
        out[value] = 1
    elif where == "missing":
        out.pop(value, None)
    else:
        out[where] = value
    return out


@functools.cache
@st.composite
def fuzzy_reading_objects(draw: st.DrawFn) -> Any:
    """Valid readings, readings with one defect (DEFECTS or NEAR_MISSES), or no object at all;
    unlabelled, for properties comparing two validators. One defect at a time, so a validator
    that misses it cannot hide behind another problem. Includes what only msgpack carries
    (NaN, +-Infinity, bytes, native timestamps)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([None, 1, "reading", [], ["v1"]]))
    obj = draw(reading_objects())
    if kind <= 2:
        return obj
    if kind <= 5:
        where, value = draw(st.sampled_from(DEFECTS))
    else:
        where, strategy = draw(st.sampled_from(NEAR_MISSES))
        value = draw(strategy)
    return apply_defect(obj, where, value)


# ---------------------------------------------------------------- lake records

HOUR = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


@functools.cache
def numeric_values() -> st.SearchStrategy[int | float]:
    """Numbers that stress statistics, often enough to collide within a few records: equal
    values of different spelling (1 and 1.0, 0.0 and -0.0), sums that round differently in
    another order, magnitudes at the float limit, big ints, subnormals."""
    return st.one_of(
        st.sampled_from([0, 0.0, -0.0, 1, 1.0, -1, -1.0]),
        st.sampled_from([0.1, 0.2, 0.3, 1e16, -1e16, 3.0, 2.0**-30, 1e-300]),
        st.sampled_from([FLOAT_MAX, -FLOAT_MAX, 1e308, -1e308, 5e-324, 2**53 + 1]),
        st.sampled_from([INT64_MAX, INT64_MIN]),
        finite_floats(),
        st.integers(-1000, 1000),
    )


@functools.cache
def record_values() -> st.SearchStrategy[bool | int | float | str]:
    """Mostly numbers; now and then a bool or a string, which are not statistics."""
    return st.one_of(
        numeric_values(),
        numeric_values(),
        numeric_values(),
        st.booleans(),
        st.sampled_from(["", "1", "on", "1.0"]),
    )


_short_ids = st.text(READING_ID_CHARS, min_size=1, max_size=16)


def records(
    hour: datetime = HOUR,
    vehicles: tuple[str, ...] = ("truck-1", "van:2"),
    names: tuple[str, ...] = ("Vehicle.Speed", "Vehicle.Gear", "Temp"),
    reading_id: st.SearchStrategy[str] | None = None,
    values: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[Record]:
    """Lake records of `hour` (UTC), from small pools so that vehicles and signals collide.

    Build the strategy once (module level), not inside a composite: building is the slow part.
    """

    def record(
        rid: str, vid: str, offset_us: int, delay_ms: int, signals: dict[str, Any]
    ) -> Record:
        ts = hour + timedelta(microseconds=offset_us)
        return Record(rid, vid, ts, ts + timedelta(milliseconds=delay_ms), signals)

    return st.builds(
        record,
        reading_id if reading_id is not None else _short_ids,
        st.sampled_from(vehicles),
        st.integers(0, 3_600_000_000 - 1),
        st.integers(0, 7_200_000),
        st.dictionaries(
            st.sampled_from(names),
            values if values is not None else record_values(),
            min_size=1,
            max_size=len(names),
        ),
    )


def distinct_records(
    max_size: int = 20, values: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[list[Record]]:
    """Records with pairwise different reading_ids."""
    return st.lists(records(values=values), max_size=max_size, unique_by=lambda r: r.reading_id)


# Small pools make the awkward cases frequent rather than possible: ties between equal numbers
# of different spelling, sums whose rounding depends on the order, sums beyond the float range.
VALUE_POOLS: dict[str, list[Any]] = {
    "ties": [0, 0.0, -0.0, 1, 1.0, -1, -1.0, 2, 2.0, True, "1"],
    "rounding": [0.1, 0.2, 0.3, 1e16, -1e16, 1.0, 3.0, 1e-300, 2.0**-30, 2**53 + 1],
    "extremes": [FLOAT_MAX, -FLOAT_MAX, 1e308, -1e308, 1.0, 5e-324, INT64_MAX, INT64_MIN],
}
