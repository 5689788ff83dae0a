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
import string
from collections.abc import Callable, Iterable, Sequence
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(t: datetime) -> int:
    return (t - _EPOCH) // _MS

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


# ------------------------------------------------------------------ the ingest fast path

# msgspec runs a Python `re` search per `pattern`-constrained string: 7 per typical reading, most
# of the decode time. Ingest decodes into these twins of `Reading` without the patterns (every
# other constraint stays in C) and then `check_identifiers` runs each distinct name through the
# regex once. A miss raises the error msgspec would have raised, so the 422 path is unchanged.
# `Reading` itself keeps every static rule for everyone else who decodes with it.
_LooseVehicleId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_VEHICLE_ID)]
_LooseSignals = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=MAX_SIGNAL_NAME)], SignalValue],
    msgspec.Meta(min_length=1, max_length=HARD_MAX_SIGNALS),
]
_LooseReadingId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_READING_ID)]


class WireReading(Reading, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A `Reading` decoded without its patterns: valid only once `check_identifiers` passed."""

    vehicle_id: _LooseVehicleId
    signals: _LooseSignals
    reading_id: _LooseReadingId | None = None


class WireBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    readings: list[WireReading]


class _KnownValid:
    """Strings already found to match a pattern, so each distinct one meets the regex once.

    Bounded: when full it starts over, so a client sending endless distinct names costs a
    regex search per name (as without the cache), never memory. Set operations hold the GIL,
    so threads may share it.
    """

    __slots__ = ("_limit", "_search", "ok")

    def __init__(self, pattern: str, limit: int) -> None:
        self.ok: set[str] = set()  # cleared in place, never replaced: callers may hold it
        self._search = re.compile(pattern).search
        self._limit = limit

    def learn(self, names: Iterable[str]) -> bool:
        """Check the names not known yet; False at the first that breaks the pattern."""
        ok = self.ok
        for name in names:
            if name not in ok:
                if self._search(name) is None:
                    return False
                if len(ok) >= self._limit:
                    ok.clear()
                ok.add(name)
        return True


# A fleet's vehicles and a catalogue's signal names fit; worst case a few MiB of strings.
_valid_vehicle_ids = _KnownValid(VEHICLE_ID_PATTERN, 65_536)
_valid_signal_names = _KnownValid(SIGNAL_NAME_PATTERN, 16_384)
# Reading ids are unique per reading, so a cache would only miss: the pattern is a character
# set (no `\n` in it, so `(?!\n)` holds too), and `strip` removing every character says all
# belong to it.
_READING_ID_CHARS = string.ascii_letters + string.digits + "_.:-"


def _pattern_error(pattern: str, where: str) -> msgspec.ValidationError:
    return msgspec.ValidationError(f"Expected `str` matching regex {pattern!r} - at {where}")


def check_identifiers(readings: Sequence[WireReading], path: str) -> None:
    """The pattern rules `WireReading` left out, with msgspec's error for the first break.

    `path` is where msgspec puts the readings: `$.readings` in a batch, `$` for NDJSON lines.
    """
    vehicles, names = _valid_vehicle_ids, _valid_signal_names
    known_vehicles, known_names = vehicles.ok, names.ok.issuperset
    for i, r in enumerate(readings):
        if r.vehicle_id not in known_vehicles and not vehicles.learn((r.vehicle_id,)):
            raise _pattern_error(VEHICLE_ID_PATTERN, f"`{path}[{i}].vehicle_id`")
        if not known_names(r.signals) and not names.learn(r.signals):
            raise _pattern_error(SIGNAL_NAME_PATTERN, f"`key` in `{path}[{i}].signals`")
        rid = r.reading_id
        if rid is not None and rid.strip(_READING_ID_CHARS):
            raise _pattern_error(READING_ID_PATTERN, f"`{path}[{i}].reading_id`")


def schema_doc(description: str, **schema: Any) -> msgspec.Meta:
    """Documentation for the published JSON Schemas only: nothing is checked on decode (the
    lake holds only what ingest validated, and aggregation decodes every line)."""
    return msgspec.Meta(description=description, extra_json_schema=schema)


class Record(msgspec.Struct, frozen=True):
    """One line of a raw lake file. Field order is the documented line order."""

    reading_id: Annotated[str, schema_doc(
        "the sender's id, or a content hash of vehicle_id, ts and signals",
        pattern=READING_ID_PATTERN.replace("(?!\\n)", ""), minLength=1, maxLength=128)]
    vehicle_id: Annotated[str, schema_doc(
        "the vehicle", pattern=VEHICLE_ID_PATTERN.replace("(?!\\n)", ""),
        minLength=1, maxLength=64)]
    # A time without a zone is refused on decode: it cannot be ordered against the others.
    ts: Annotated[datetime, msgspec.Meta(tz=True), schema_doc(
        "event time on the vehicle, RFC 3339 in UTC with a Z", format="date-time")]
    received_at: Annotated[datetime, msgspec.Meta(tz=True), schema_doc(
        "when ingest accepted the reading, RFC 3339 in UTC with a Z", format="date-time")]
    signals: Annotated[dict[str, bool | int | float | str], schema_doc(
        "signal name (VSS style) -> finite number, bool, or string of at most 256 characters",
        propertyNames={"pattern": SIGNAL_NAME_PATTERN.replace("(?!\\n)", ""),
                       "maxLength": 128},
        minProperties=1)]


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


def derive_reading_ids(readings: Iterable[Reading]) -> list[str]:
    """`derive_reading_id` of each reading, with one encoder call for all of them: the
    per-call cost of the encoder was most of the encoding. JSON escapes every control
    character inside strings, so the newlines of `encode_lines` separate the payloads."""
    items: list[list[Any]] = []
    for r in readings:
        u = r.ts if r.ts.tzinfo is UTC else r.ts.astimezone(UTC)
        items.append([r.vehicle_id, u if u.microsecond and u.year >= 1000 else canonical_ts(u),
                      r.signals])
    if not items:
        return []
    payloads = _canonical_encoder.encode_lines(items).split(b"\n")
    payloads.pop()  # after the last newline
    sha256, prefix = hashlib.sha256, _ID_PREFIX
    return [sha256(prefix + p).hexdigest()[:32] for p in payloads]


# The compiled pass over a request's readings (`_ingestcore.c`); None where the package was
# built without a C compiler. A module attribute, so tests can force the Python path.
kernel: Callable[[list[Reading], bytes, bytes], KernelOutput | None] | None
try:
    from telemetry._ingestcore import prepare as kernel
except ImportError:
    kernel = None

# hour (epoch s) -> (that hour's lake lines, each reading's ts in epoch ms, their indexes)
HourLines = dict[int, tuple[bytes, list[int], list[int]]]
KernelOutput = tuple[list[str], HourLines]


def ids_and_lines(readings: Sequence[Reading], received_at: datetime) -> KernelOutput | None:
    """The reading ids and each hour's lake lines of a request, by the compiled kernel: the
    same ids and bytes as `derive_reading_ids` and `encode_records` of the records grouped by
    hour, from one encoder call and one C pass (which sorts each reading's signals for its id).
    None without the kernel, or when it declines (a reading msgspec spells in a way it does not
    know, an offset finer than minutes): the caller takes the Python path."""
    if kernel is None or type(readings) is not list:
        return None
    return kernel(readings, _record_encoder.encode_lines(readings),
                  _record_encoder.encode(received_at))


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


def encode_records(records: Sequence[Record]) -> bytes:
    """The lines of `records`, each ending in a newline, in one encoder call."""
    return _record_encoder.encode_lines(records)


def decode_record(line: bytes) -> Record:
    return _record_decoder.decode(line)


def hour_of(ts: datetime) -> datetime:
    """Start of the UTC hour holding `ts`."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class ReadingRules:
    """The configurable rules of contract section 2.

    `max_lateness` and `max_hours` bound what one request costs downstream: each event-time
    hour of a request is a queue message, a raw file and an hour to aggregate again, so a
    request of a thousand readings an hour apart must not cost a thousand of each.
    """

    max_signals: int = 256
    max_clock_skew: timedelta = timedelta(seconds=300)
    max_batch: int = 1000
    max_lateness: timedelta = timedelta(days=35)
    max_hours: int = 24

    def check(self, readings: Sequence[Reading], now: datetime) -> list[Problem]:
        """Rules the decoder could not check: batch size, signal count, the time window,
        identities repeated within the request. (The hours spanned: `hours_problem`.)"""
        problems: list[Problem] = []
        n = len(readings)
        if n == 0:
            problems.append(Problem(-1, "readings", "the request holds no reading"))
        elif n > self.max_batch:
            problems.append(
                Problem(-1, "readings", f"{n} readings exceed the maximum of {self.max_batch}")
            )
        latest = now + self.max_clock_skew
        earliest = max(now - self.max_lateness, MIN_TS)
        for i, r in enumerate(readings):
            if r.ts < earliest:
                problems.append(Problem(i, "ts", self._too_old(r.ts)))
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
        problems.extend(repeated_identities(readings))
        return problems

    def hours_problem(self, hours: int) -> Problem | None:
        """The request-wide problem of readings spanning `hours` distinct UTC hours of event
        time, if too many. Checked where the readings are grouped by hour anyway (ingest's
        `prepare`), so the rule costs no pass of its own."""
        if hours <= self.max_hours:
            return None
        return Problem(-1, "readings", f"the readings span {hours} hours (UTC) of event time; "
                       f"one request may span at most {self.max_hours}: split it into requests "
                       "of fewer hours each")

    def _too_old(self, ts: datetime) -> str:
        if ts < MIN_TS:
            return "before 2000-01-01T00:00:00Z"
        return f"older than the maximum lateness of {_span(self.max_lateness)}"


def _span(t: timedelta) -> str:
    s = t.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600)):
        if s >= size and s % size == 0:
            return f"{s / size:g} {unit}"
    return f"{s:g} s"


def repeated_identities(readings: Sequence[Reading]) -> list[Problem]:
    """A reading whose identity, `(vehicle_id, reading_id)`, an earlier reading of the same
    request has: only one of them could count, so the client must say which."""
    ids = [r.reading_id for r in readings]
    if None in ids:
        ids = [rid for rid in ids if rid is not None]
    if len(set(ids)) == len(ids):  # distinct ids, distinct identities: the usual case, cheap
        return []
    first: dict[tuple[str, str], int] = {}
    problems: list[Problem] = []
    for i, r in enumerate(readings):
        if r.reading_id is None:
            continue  # derived from the content: equal ids are equal readings
        key = (r.vehicle_id, r.reading_id)
        j = first.setdefault(key, i)
        if j != i:
            problems.append(Problem(i, "reading_id", f"readings {j} and {i} have the same "
                                    "vehicle_id and reading_id; a reading's identity is unique"))
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
