"""Hourly per-vehicle statistics as a mergeable value.

Partials computed over disjoint sets of readings merge, in any order and any grouping, to exactly
the result of one pass over all of them: counts add, min/max combine, and the sum behind each
mean is kept exact (the values themselves, or a non-overlapping float expansion of their sum),
so floating-point rounding cannot depend on the split. Duplicates (one reading identity,
`(vehicle_id, reading_id)`, in several raw files) are removed by `dedupe` before aggregating, so
a reading never counts twice. The identity is never the reading_id alone: ids are chosen by
clients, and one vehicle's id must not hide another vehicle's reading.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, count, filterfalse
from operator import attrgetter, itemgetter
from typing import Annotated, Any

import msgspec

from telemetry.domain.readings import Record, Timestamp, encode_record, schema_doc

try:
    from telemetry._hourscan import aggregate_hour as _aggregate_hour
except ImportError:  # built without a C compiler: the Python paths below do all of it
    _aggregate_hour = None  # type: ignore[assignment]

Num = int | float


def exact_sum(values: list[float]) -> tuple[float, ...]:
    """Floats whose exact sum equals the exact sum of `values`, largest first.

    Each step takes the correctly rounded sum of what is left (math.fsum is exact), so the
    expansion, and hence fsum() of it, does not depend on the order of `values`.
    """
    parts: list[float] = []
    rest = list(values)
    try:
        for _ in range(64):  # an exact double sum spans < 2,200 bits: 41 steps at most
            s = math.fsum(rest)
            if s == 0.0:
                break
            parts.append(s)
            rest.append(-s)
    except OverflowError:  # the sum leaves the float range: same expansion, in integers
        return _exact_expansion(values)
    return tuple(parts)


_SCALE_BITS = 1074  # every finite double is an integer multiple of 2**-1074
_FLOAT_MAX = 1.7976931348623157e308


def _scaled(x: float) -> int:
    """`x * 2**1074`, exactly."""
    n, d = x.as_integer_ratio()
    return n * ((1 << _SCALE_BITS) // d)


def _exact_expansion(values: list[float]) -> tuple[float, ...]:
    """`exact_sum` for sums beyond the float range: the same greedy steps on the exact integer
    sum, each part clamped to the largest double. A function of the exact sum only, like
    `exact_sum`, so the result still does not depend on order or split."""
    rest = sum(_scaled(v) for v in values)
    parts: list[float] = []
    while rest:
        try:
            p = rest / (1 << _SCALE_BITS)  # int / int is correctly rounded
        except OverflowError:
            p = _FLOAT_MAX if rest > 0 else -_FLOAT_MAX
        parts.append(p)
        rest -= _scaled(p)
    return tuple(parts)


def _tie(v: Num) -> tuple[Num, bool, float]:
    """Sort key for min/max: equal numbers of different spelling (1 and 1.0, 0.0 and -0.0)
    resolve the same way whatever the order they come in."""
    return (v, isinstance(v, float), math.copysign(1.0, v))


def extreme(pick: Callable[..., Num], values: Sequence[Num], mixed: bool) -> Num:
    """`pick(values, key=_tie)` without a Python call per value: equal values of different
    spelling exist only among ints mixed with floats, or as 0.0 and -0.0, and only matter when
    the extreme occurs more than once."""
    best = pick(values)
    if (mixed or (best == 0 and isinstance(best, float))) and values.count(best) > 1:
        return pick((v for v in values if v == best), key=_tie)
    return best


# Below this magnitude, and with fewer values than this, no sum of values can overflow: fsum of
# the values is then the correctly rounded exact sum, which is what fsum of the expansion gives.
_SAFE = 1e300
_SAFE_COUNT = 10**7


@dataclass(slots=True)
class SignalStats:
    count: int
    min: Num
    max: Num
    # The exact sum as an expansion (see `exact_sum`), or None while `values` are kept: a
    # mean needs only fsum(values), so the expansion (three more passes over the values) is
    # made only when a merge meets statistics that hold an expansion.
    exact: tuple[float, ...] | None
    values: Sequence[Num] | None = field(default=None, repr=False, compare=False)
    # fsum of the values, for statistics of one pass that are never merged (see `final`)
    total: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def final(cls, count: int, lo: Num, hi: Num, values: Sequence[Num]) -> SignalStats:
        """Statistics that are written, not merged: only the rounded sum is kept, so the values
        (a column slice) are freed at once and their memory reused by the next column."""
        if lo > -_SAFE and hi < _SAFE and count < _SAFE_COUNT:
            return cls(count, lo, hi, None, None, math.fsum(values))
        return cls(count, lo, hi, exact_sum(list(map(float, values))))

    @classmethod
    def of(cls, values: list[Num]) -> SignalStats:
        mixed = len(set(map(type, values))) > 1
        return cls(len(values), extreme(min, values, mixed), extreme(max, values, mixed),
                   None, values)

    @property
    def sum_parts(self) -> tuple[float, ...]:
        if self.exact is None:
            if self.values is None:
                raise ValueError("statistics made by `final` cannot be merged")
            self.exact = exact_sum(list(map(float, self.values)))
            self.values = None
        return self.exact

    def __reduce__(self) -> tuple[type[SignalStats], tuple[Any, ...]]:
        # The constructor's arguments: a split hour sends thousands of these between
        # processes, and the slots dataclass's own pickling runs Python code per object.
        return (SignalStats, (self.count, self.min, self.max, self.exact, self.values,
                              self.total))

    def merge(self, other: SignalStats) -> SignalStats:
        # `_tie` (a Python call) only where the spelling of equal numbers must be settled
        lo = (min(self.min, other.min) if self.min != other.min
              else min(self.min, other.min, key=_tie))
        hi = (max(self.max, other.max) if self.max != other.max
              else max(self.max, other.max, key=_tie))
        if self.values is not None and other.values is not None:
            # Both sides still hold their values: keep them, and sum once at the end, which
            # costs one pass where two expansions and their merge cost about five.
            return SignalStats(self.count + other.count, lo, hi, None,
                               _joined(self.values, other.values))
        return SignalStats(self.count + other.count, lo, hi,
                           exact_sum([*self.sum_parts, *other.sum_parts]))

    @property
    def mean(self) -> float:
        if self.total is not None:
            return self.total / self.count
        if (
            self.values is not None
            and self.min > -_SAFE
            and self.max < _SAFE
            and self.count < _SAFE_COUNT
        ):
            return math.fsum(self.values) / self.count
        try:
            return math.fsum(self.sum_parts) / self.count
        except OverflowError:  # the sum is beyond the float range; the mean never is
            return sum(_scaled(p) for p in self.sum_parts) / (self.count << _SCALE_BITS)

    def to_json(self) -> dict[str, Num]:
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.mean}


def _joined(a: Sequence[Num], b: Sequence[Num]) -> Sequence[Num]:
    """Two value sequences as one (C arrays of one type stay one)."""
    if isinstance(a, array) and isinstance(b, array) and a.typecode == b.typecode:
        return a + b
    return [*a, *b]


def _packed(values: Sequence[Num], typecode: str | None) -> Sequence[Num]:
    """A vehicle's values of a column kept for a merge: 8 bytes each in a C array where the
    column is of one numeric type, so that sending them to another process is a copy."""
    if typecode is None:
        return values
    return array(typecode, values)


@dataclass(slots=True)
class VehicleHour:
    readings: int
    first_ts: datetime
    last_ts: datetime
    signals: dict[str, SignalStats] = field(default_factory=dict)

    def __reduce__(self) -> tuple[type[VehicleHour], tuple[Any, ...]]:
        return (VehicleHour, (self.readings, self.first_ts, self.last_ts, self.signals))

    def merge(self, other: VehicleHour) -> VehicleHour:
        signals = dict(self.signals)
        for name, st in other.signals.items():
            mine = signals.get(name)
            signals[name] = st if mine is None else mine.merge(st)
        return VehicleHour(
            self.readings + other.readings,
            min(self.first_ts, other.first_ts),
            max(self.last_ts, other.last_ts),
            signals,
        )


class AggregateLine(msgspec.Struct, frozen=True):
    """One line of `aggregates/hourly/.../vehicles.jsonl`."""

    hour_start: Annotated[datetime, schema_doc("start of the UTC hour, RFC 3339 with a Z",
                                         format="date-time")]
    vehicle_id: str
    readings: Annotated[int, schema_doc("distinct readings of the vehicle in the hour", minimum=1)]
    first_ts: Annotated[datetime, schema_doc("earliest ts of those readings", format="date-time")]
    last_ts: Annotated[datetime, schema_doc("latest ts of those readings", format="date-time")]
    signals: Annotated[dict[str, Annotated[dict[str, Num], schema_doc(
        "readings carrying the signal, min, max, mean",
        required=["count", "min", "max", "mean"],
        properties={"count": {"type": "integer", "minimum": 1}, "min": {"type": "number"},
                    "max": {"type": "number"}, "mean": {"type": "number"}})]], schema_doc(
        "per numeric (int or float) signal")]


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(AggregateLine)


@dataclass(slots=True)
class HourAggregate:
    hour: datetime
    vehicles: dict[str, VehicleHour] = field(default_factory=dict)

    def merge(self, other: HourAggregate) -> HourAggregate:
        if other.hour != self.hour:
            raise ValueError("cannot merge aggregates of different hours")
        vehicles = dict(self.vehicles)
        for vid, vh in other.vehicles.items():
            mine = vehicles.get(vid)
            vehicles[vid] = vh if mine is None else mine.merge(vh)
        return HourAggregate(self.hour, vehicles)

    @property
    def readings(self) -> int:
        return sum(v.readings for v in self.vehicles.values())

    def lines(self) -> list[AggregateLine]:
        hour = self.hour.astimezone(UTC)
        return [
            AggregateLine(
                hour_start=hour,
                vehicle_id=vid,
                readings=vh.readings,
                first_ts=vh.first_ts.astimezone(UTC),
                last_ts=vh.last_ts.astimezone(UTC),
                signals={n: vh.signals[n].to_json() for n in sorted(vh.signals)},
            )
            for vid, vh in sorted(self.vehicles.items())
        ]

    def encode(self) -> bytes:
        return b"".join(_line_encoder.encode(line) + b"\n" for line in self.lines())


def decode_aggregate_lines(data: bytes) -> list[AggregateLine]:
    return _line_decoder.decode_lines(data)


def aggregate(hour: datetime, records: Iterable[Record]) -> HourAggregate:
    """Aggregate records that are distinct by identity (see `dedupe`)."""
    counts: dict[str, int] = {}
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    values: dict[str, dict[str, list[Num]]] = {}
    for r in records:
        vid = r.vehicle_id
        ts = r.ts
        n = counts.get(vid)
        if n is None:
            counts[vid] = 1
            first[vid] = last[vid] = ts
            sig = values[vid] = {}
        else:
            counts[vid] = n + 1
            if ts < first[vid]:
                first[vid] = ts
            elif ts > last[vid]:
                last[vid] = ts
            sig = values[vid]
        for name, v in r.signals.items():
            t = type(v)
            if t is float or t is int:  # bool and str are not numeric statistics
                lst = sig.get(name)
                if lst is None:
                    sig[name] = [v]  # type: ignore[list-item]
                else:
                    lst.append(v)  # type: ignore[arg-type]
    out = HourAggregate(hour)
    for vid, n in counts.items():
        out.vehicles[vid] = VehicleHour(
            n,
            first[vid],
            last[vid],
            {name: SignalStats.of(vs) for name, vs in values[vid].items()},
        )
    return out


Identity = tuple[str, str]
"""A reading's identity: `(vehicle_id, reading_id)`."""


def dedupe(records: Iterable[Record]) -> list[Record]:
    """One record per identity. Should two copies differ, the one received first wins (ties:
    the smaller encoding), so the outcome never depends on file or arrival order."""
    seen: dict[Identity, Record] = {}
    for r in records:
        key = (r.vehicle_id, r.reading_id)
        prev = seen.get(key)
        if prev is None:
            seen[key] = r
        elif r.received_at != prev.received_at:
            if r.received_at < prev.received_at:
                seen[key] = r
        # compare encodings, not values: 1, 1.0 and True are == but differ in the file
        elif encode_record(r) < encode_record(prev):
            seen[key] = r
    return list(seen.values())


# ---------------------------------------------------------------- the fast path for whole files
#
# Decoding each line into a `Record` builds a dict per reading, and a str per signal name per
# reading; that, and a Python step per signal value, is most of the cost of an hour. The lines
# of an hour mostly share one set of signal names, so `RawDecoder` decodes them into a Struct
# made for those names (keys are matched, never allocated), and `aggregate_lean` works a column
# at a time with C-level builtins (sort, map, min, max, fsum). The result is the same value as
# `aggregate(hour, dedupe(records))` over the same lines.

_Value = bool | int | float | str
_NUMERIC: frozenset[type] = frozenset((int, float))


class _Names(msgspec.Struct):
    signals: dict[str, msgspec.Raw] = {}


_names_decoder = msgspec.json.Decoder(_Names)
_SAMPLE_BYTES = 64 * 1024


class RawDecoder:
    """Decodes raw lake files into lean records (attributes as `Record`'s, signals a Struct).

    The signal Struct forbids unknown names, so a line with a name not seen before fails that
    file's decode; the decoder then learns the file's names and decodes it again. Records
    decoded before that lack the new names: `generation` counts the Structs made, and records
    of different generations must not be aggregated together (decode them again). A line that
    `Record` would refuse is refused too (`msgspec.DecodeError`).
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.generation = 0
        self._decoder: msgspec.json.Decoder[Any] | None = None

    def decode(self, data: bytes) -> list[Any]:
        if self._decoder is None:
            # The first lines usually name every signal of the hour; a miss costs a relearn.
            cut = data.rfind(b"\n", 0, _SAMPLE_BYTES) + 1
            self._learn(data[: cut or len(data)])
        assert self._decoder is not None
        try:
            return self._decoder.decode_lines(data)
        except msgspec.ValidationError as exc:
            if "unknown field" not in str(exc) or not self._learn(data):
                raise
            return self._decoder.decode_lines(data)

    def _learn(self, data: bytes) -> bool:
        """Add the file's signal names to the Struct; False when there was nothing new."""
        seen = dict.fromkeys(self.names)
        for line in _names_decoder.decode_lines(data):
            seen.update(dict.fromkeys(line.signals))
        names = tuple(seen)
        if names == self.names and self._decoder is not None:
            return False
        self.names = names
        self.generation += 1
        self._decoder = msgspec.json.Decoder(_lean_line_type(names))
        return True


def _lean_line_type(names: tuple[str, ...]) -> type:
    signals = msgspec.defstruct(
        "LeanSignals",
        [(f"s{i}", _Value | msgspec.UnsetType, msgspec.UNSET) for i in range(len(names))],
        rename={f"s{i}": n for i, n in enumerate(names)},
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.defstruct(
        "LeanRecord",
        [
            ("reading_id", str),
            ("vehicle_id", str),
            ("ts", Timestamp),
            ("received_at", Timestamp),
            ("signals", signals),
        ],
        gc=False,
    )


def aggregate_lean(
    hour: datetime,
    records: list[Any],
    names: Sequence[str],
    skip: Collection[Identity] = (),
    *,
    mergeable: bool = False,
) -> HourAggregate | None:
    """`aggregate(hour, dedupe(...))` over lean records from `RawDecoder` (whose `names` are
    the signal Struct's fields, in order), leaving out the identities in `skip`; `mergeable`
    for a partial that will be merged (else its statistics are `SignalStats.final`). None when
    duplicates differ in a way only the slow path can settle (two copies of a reading
    received at the same instant with different content): the caller then takes the Record
    path."""
    out = HourAggregate(hour)
    keep = _kept_positions(records, skip)
    if keep is None:
        return None
    if not keep:
        return out
    # A Python step per vehicle and signal, none per value: each column is read once in
    # decode order (the order the objects lie in memory: decode order is memory order, and
    # vehicle order would miss the cache per value), unboxed into an array where it is all
    # floats or all ints, then put in vehicle order with one permutation of the kept
    # positions (which also drops the duplicates), so that each vehicle's values are a slice
    # for the C builtins (min, max, fsum).
    vids = list(map(_by_vehicle, records))
    vehicles = sorted(set(vids))
    code = {v: i for i, v in enumerate(vehicles)}
    codes = list(map(code.__getitem__, vids))
    gather = _gatherer(sorted(keep, key=codes.__getitem__))  # ints: the sort's fast path
    grouped = gather(codes)
    bounds: list[tuple[str, int, int]] = []
    a = 0
    for i, vid in enumerate(vehicles):
        b = bisect_right(grouped, i, a)
        if b > a:  # a vehicle seen only in a dropped copy has no line
            bounds.append((vid, a, b))
        a = b
    ts = gather(list(map(_by_ts, records)))
    sigs = list(map(_by_signals, records))
    stats: dict[str, dict[str, SignalStats]] = {v: {} for v, _, _ in bounds}
    for i, name in enumerate(names):
        col = list(map(attrgetter(f"s{i}"), sigs))
        kinds = set(map(type, col))
        numeric = kinds & _NUMERIC
        if not numeric:
            continue
        clean = kinds == numeric  # no bool, str or absent value to skip
        mixed = len(numeric) > 1
        unboxed = _unboxed(col, kinds)
        column = gather(unboxed)
        typecode = unboxed.typecode if isinstance(unboxed, array) else (
            "d" if numeric == {float} else None)  # ints beyond int64 stay Python ints
        for vid, a, b in bounds:
            vals = column[a:b]
            if not clean:
                vals = tuple(v for v in vals if type(v) is int or type(v) is float)
                if not vals:
                    continue
            m = mixed and len(set(map(type, vals))) > 1
            lo, hi = extreme(min, vals, m), extreme(max, vals, m)
            stats[vid][name] = (
                SignalStats(len(vals), lo, hi, None, _packed(vals, typecode))
                if mergeable
                else SignalStats.final(len(vals), lo, hi, vals)
            )
    for vid, a, b in bounds:
        span = ts[a:b]
        out.vehicles[vid] = VehicleHour(b - a, min(span), max(span), stats[vid])
    return out


def _gatherer(perm: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """`seq -> tuple(seq[i] for i in perm)`, in C."""
    if len(perm) == 1:
        only = perm[0]
        return lambda seq: (seq[only],)
    return itemgetter(*perm)


def _unboxed(col: list[Any], kinds: set[type]) -> Sequence[Any]:
    """The column as a C array where it is one numeric type, so the gather reads 8 bytes a
    value from one block instead of chasing a pointer per value."""
    if kinds == {float}:
        return array("d", col)
    if kinds == {int}:
        try:
            return array("q", col)
        except OverflowError:  # beyond int64: keep the Python ints
            return col
    return col


_by_vehicle = attrgetter("vehicle_id")
_by_ts = attrgetter("ts")
_by_id = attrgetter("reading_id")
_by_received = attrgetter("received_at")
_by_signals = attrgetter("signals")


def _kept_positions(records: list[Any], skip: Collection[Identity]) -> Sequence[int] | None:
    """The position of one record per identity not in `skip`: the one received first, as
    `dedupe`; None when that needs the encodings to break a tie."""
    # An identity repeats only where its reading_id does: the ids alone are looked at first
    # (strings, no tuple per record), and identities are made only for the records whose id
    # repeats or is skipped.
    rids = list(map(_by_id, records))
    suspects = _duplicated(rids)
    if skip:
        suspects.update(rid for _, rid in skip)
    if not suspects:
        return range(len(rids))
    positions = list(compress(count(), map(suspects.__contains__, rids)))
    ids = [(records[i].vehicle_id, rids[i]) for i in positions]
    repeated = {k for k, n in Counter(ids).items() if n > 1}
    repeated.update(skip)
    # The copies of duplicated (or skipped) identities; then a Python step per copy only.
    copies: dict[Identity, list[int]] = {}
    for i, ident in zip(positions, ids, strict=True):
        if ident in repeated:
            copies.setdefault(ident, []).append(i)
    if not copies:
        return range(len(rids))
    losers: set[int] = set()
    for ident, where in copies.items():
        if ident in skip:
            losers.update(where)
            continue
        first = min(records[i].received_at for i in where)
        earliest = [i for i in where if records[i].received_at == first]
        if len({_lean_encoder.encode(records[i]) for i in earliest}) > 1:
            return None
        losers.update(where)
        losers.discard(earliest[0])
    return list(filterfalse(losers.__contains__, range(len(rids))))


_CHUNK = 4096


def _duplicated(ids: list[str]) -> set[str]:
    """The ids that occur more than once. Chunk by chunk, so that most set work happens in a
    set small enough for the cache, rather than one dict of all ids with their positions."""
    seen: set[str] = set()
    dup: set[str] = set()
    for a in range(0, len(ids), _CHUNK):
        chunk = ids[a : a + _CHUNK]
        mine = set(chunk)
        if len(mine) < len(chunk):
            dup.update(k for k, n in Counter(chunk).items() if n > 1)
        dup |= seen & mine
        seen |= mine
    return dup


_lean_encoder = msgspec.json.Encoder()


# ---------------------------------------------------------------- the compiled whole-hour path
#
# `telemetry._hourscan.aggregate_hour` scans an hour's raw files in C and computes what
# `aggregate_lean` does over them (statistics of one pass, see `SignalStats.final`), for the
# lines the worker writes; on anything else it answers None and the paths above take the hour.
# It can take one part of the vehicles only (a hash of the id): parts share no reading
# identity, so parts scanned in several processes add up to the hour. Tests set `hour_kernel`
# to None to run the Python paths alone.

_KernelSignal = tuple[str, int, Num, Num, float]  # name, count, min, max, fsum
_KernelVehicle = tuple[str, int, int, int, list[_KernelSignal]]  # first, last: epoch us
KernelScan = tuple[int, list[_KernelVehicle]]
"""Raw lines and per-vehicle statistics of one part of an hour, as the kernel returns them."""
HourKernel = Callable[[list[bytes | memoryview], int, int], KernelScan | None]
hour_kernel: HourKernel | None = _aggregate_hour
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def scan_raw(
    blobs: list[bytes | memoryview], part: int = 0, parts: int = 1
) -> KernelScan | None:
    """The kernel's scan of an hour's raw file contents (gunzipped), for the vehicles of
    `part` of `parts`; None when it is not built or leaves these lines to the Python paths."""
    if hour_kernel is None:
        return None
    return hour_kernel(blobs, part, parts)


def aggregate_scans(hour: datetime, scans: Iterable[KernelScan]) -> tuple[int, HourAggregate]:
    """The raw line count and aggregate of an hour from the scans of all its parts."""
    out = HourAggregate(hour)
    lines = 0
    for raw, vehicles in scans:
        lines += raw
        for vid, readings, first_us, last_us, signals in vehicles:
            out.vehicles[vid] = VehicleHour(
                readings,
                _EPOCH + timedelta(microseconds=first_us),
                _EPOCH + timedelta(microseconds=last_us),
                {name: SignalStats(n, lo, hi, None, None, total)
                 for name, n, lo, hi, total in signals},
            )
    return lines, out


def aggregate_raw(
    hour: datetime, blobs: list[bytes | memoryview]
) -> tuple[int, HourAggregate] | None:
    """The raw line count and aggregate of an hour's raw file contents, as `aggregate_lean`
    over their lean records; None when the kernel is not built or leaves them to Python."""
    scan = scan_raw(blobs)
    return None if scan is None else aggregate_scans(hour, [scan])
