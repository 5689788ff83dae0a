"""A reading, its rules (contract section 2), the reading-id derivation and the lake record.

Static rules (types, patterns, lengths) live in the msgspec types, so decoding checks them in C.
Rules that depend on configuration or on the clock (signal count, clock skew) live in
`ReadingRules`. `describe_problems` re-checks an undecodable-into-type payload in plain Python to
list *every* problem, which msgspec (first error only) cannot.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from telemetry.domain.errors import Problem

# `$` in Python regexes also matches before a trailing newline; `(?!\n)` closes that gap and is
# still a valid ECMA regex for the OpenAPI document.
VEHICLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(?!\n)$"
SIGNAL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*(?!\n)$"
READING_ID_PATTERN = r"^[A-Za-z0-9_.:-]+(?!\n)$"

MAX_VEHICLE_ID = 64
MAX_SIGNAL_NAME = 128
MAX_STRING_VALUE = 256
MAX_READING_ID = 128
# The configurable signal limit (default 256) is checked by ReadingRules; this is the ceiling the
# decoder enforces whatever the configuration says, so a hostile body cannot build a huge dict.
HARD_MAX_SIGNALS = 4096
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
_FLOAT_MAX = 1.7976931348623157e308

VehicleId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_VEHICLE_ID, pattern=VEHICLE_ID_PATTERN)
]
SignalName = Annotated[str, msgspec.Meta(max_length=MAX_SIGNAL_NAME, pattern=SIGNAL_NAME_PATTERN)]
# ge/le reject NaN and +-Infinity (msgpack can carry them; JSON cannot).
Number = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
Integer = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # int64
Text = Annotated[str, msgspec.Meta(max_length=MAX_STRING_VALUE)]
SignalValue = bool | Integer | Number | Text
Signals = Annotated[
    dict[SignalName, SignalValue], msgspec.Meta(min_length=1, max_length=HARD_MAX_SIGNALS)
]
ReadingId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_READING_ID, pattern=READING_ID_PATTERN)
]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One vehicle, one instant, named signals."""

    vehicle_id: VehicleId
    ts: Timestamp
    signals: Signals
    reading_id: ReadingId | None = None


class ReadingBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /v1/readings` as JSON or msgpack."""

    readings: list[Reading]


class Record(msgspec.Struct, frozen=True):
    """One line of a raw lake file. Field order is the documented line order."""

    reading_id: str
    vehicle_id: str
    ts: datetime
    received_at: datetime
    signals: dict[str, bool | int | float | str]


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(Record)
_canonical_encoder = msgspec.json.Encoder(order="sorted")


def canonical_ts(ts: datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits: one spelling per instant."""
    u = ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    if u.year < 1000:  # msgspec pads the year to 4 digits, strftime does not
        return f"{u:%Y-%m-%dT%H:%M:%S}.{u.microsecond:06d}Z"
    # msgspec spells a UTC datetime this way, less the fraction when it is zero, at a
    # fraction of strftime's cost (ingest derives an id per reading).
    text = _record_encoder.encode(u)[1:-1].decode()
    return text if u.microsecond else text[:-1] + ".000000Z"


_ID_PREFIX = b"telemetry.reading.v1\n"


def derive_reading_id(vehicle_id: str, ts: datetime, signals: dict[str, Any]) -> str:
    """Content hash of a reading, stable across processes, machines and versions.

    sha256 over `telemetry.reading.v1\\n` followed by the compact JSON array
    `[vehicle_id, canonical_ts(ts), signals]` with object keys sorted, numbers as shortest
    round-trip decimals. The first 32 hex digits (128 bits) are the id.
    """
    u = ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    # With a non-zero fraction (and a 4-digit year) the encoder writes the datetime exactly as
    # canonical_ts spells it, so the string need not be built.
    when: datetime | str = u if u.microsecond and u.year >= 1000 else canonical_ts(u)
    payload = _canonical_encoder.encode([vehicle_id, when, signals])
    return hashlib.sha256(_ID_PREFIX + payload).hexdigest()[:32]


def reading_id_of(reading: Reading) -> str:
    return reading.reading_id or derive_reading_id(reading.vehicle_id, reading.ts, reading.signals)


def to_record(reading: Reading, reading_id: str, received_at: datetime) -> Record:
    return Record(
        reading_id=reading_id,
        vehicle_id=reading.vehicle_id,
        ts=reading.ts.astimezone(UTC),
        received_at=received_at.astimezone(UTC),
        signals=reading.signals,
    )


def encode_record(record: Record) -> bytes:
    return _record_encoder.encode(record)


def decode_record(line: bytes) -> Record:
    return _record_decoder.decode(line)


def hour_of(ts: datetime) -> datetime:
    """Start of the UTC hour holding `ts`."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class ReadingRules:
    """The configurable rules of contract section 2."""

    max_signals: int = 256
    max_clock_skew: timedelta = timedelta(seconds=300)
    max_batch: int = 1000

    def check(self, readings: Sequence[Reading], now: datetime) -> list[Problem]:
        """Rules the decoder could not check: batch size, signal count, the time window."""
        problems: list[Problem] = []
        n = len(readings)
        if n == 0:
            problems.append(Problem(-1, "readings", "the request holds no reading"))
        elif n > self.max_batch:
            problems.append(
                Problem(-1, "readings", f"{n} readings exceed the maximum of {self.max_batch}")
            )
        latest = now + self.max_clock_skew
        for i, r in enumerate(readings):
            if r.ts < MIN_TS:
                problems.append(Problem(i, "ts", "before 2000-01-01T00:00:00Z"))
            elif r.ts > latest:
                problems.append(
                    Problem(
                        i,
                        "ts",
                        f"later than now + {self.max_clock_skew.total_seconds():g} s clock skew",
                    )
                )
            if len(r.signals) > self.max_signals:
                problems.append(
                    Problem(
                        i,
                        "signals",
                        f"{len(r.signals)} signals exceed the maximum of {self.max_signals}",
                    )
                )
        return problems


_VEHICLE_RE = re.compile(VEHICLE_ID_PATTERN)
_SIGNAL_RE = re.compile(SIGNAL_NAME_PATTERN)
_READING_ID_RE = re.compile(READING_ID_PATTERN)
_FIELDS = ("vehicle_id", "ts", "signals", "reading_id")
_ts_decoder = msgspec.json.Decoder(Timestamp)


def describe_problems(index: int, obj: Any) -> list[Problem]:
    """Every static rule a decoded-but-untyped reading breaks. Used only on the error path."""
    if not isinstance(obj, dict):
        return [Problem(index, "", "a reading must be an object")]
    out: list[Problem] = []
    for k in obj:
        if k not in _FIELDS:
            out.append(Problem(index, str(k), "unknown field"))
    vid = obj.get("vehicle_id")
    if vid is None:
        out.append(Problem(index, "vehicle_id", "required"))
    elif not isinstance(vid, str) or not (1 <= len(vid) <= MAX_VEHICLE_ID):
        out.append(Problem(index, "vehicle_id", f"must be a string of 1-{MAX_VEHICLE_ID} chars"))
    elif not _VEHICLE_RE.search(vid):
        out.append(Problem(index, "vehicle_id", f"must match {VEHICLE_ID_PATTERN}"))
    ts = obj.get("ts")
    if ts is None:
        out.append(Problem(index, "ts", "required"))
    elif isinstance(ts, datetime):
        if ts.tzinfo is None:
            out.append(Problem(index, "ts", "must carry a UTC offset"))
    elif not isinstance(ts, str):
        out.append(Problem(index, "ts", "must be an RFC 3339 timestamp string"))
    else:
        try:
            _ts_decoder.decode(_record_encoder.encode(ts))
        except msgspec.ValidationError:
            out.append(Problem(index, "ts", "must be an RFC 3339 timestamp with a UTC offset"))
    rid = obj.get("reading_id")
    if rid is not None and (
        not isinstance(rid, str)
        or not (1 <= len(rid) <= MAX_READING_ID)
        or not _READING_ID_RE.search(rid)
    ):
        out.append(
            Problem(index, "reading_id", f"must be 1-{MAX_READING_ID} chars {READING_ID_PATTERN}")
        )
    signals = obj.get("signals")
    if signals is None:
        out.append(Problem(index, "signals", "required"))
    elif not isinstance(signals, dict):
        out.append(Problem(index, "signals", "must be an object of name -> value"))
    elif not signals:
        out.append(Problem(index, "signals", "must hold at least one signal"))
    elif len(signals) > HARD_MAX_SIGNALS:
        out.append(Problem(index, "signals", f"more than {HARD_MAX_SIGNALS} signals"))
    else:
        for name, value in signals.items():
            out.extend(_signal_problems(index, name, value))
    return out


def _signal_problems(index: int, name: Any, value: Any) -> list[Problem]:
    where = f"signals.{name}"
    if not isinstance(name, str) or len(name) > MAX_SIGNAL_NAME or not _SIGNAL_RE.search(name):
        return [Problem(index, where, f"name must match {SIGNAL_NAME_PATTERN}, <= 128 chars")]
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        if not -(2**63) <= value <= 2**63 - 1:
            return [Problem(index, where, "integer out of the 64-bit range")]
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [Problem(index, where, "number must be finite")]
    if isinstance(value, str):
        if len(value) > MAX_STRING_VALUE:
            return [Problem(index, where, f"string longer than {MAX_STRING_VALUE} chars")]
        return []
    if value is None:
        return [Problem(index, where, "null is not allowed")]
    return [Problem(index, where, "must be a number, bool or string (no nesting)")]
