"""Hourly per-vehicle statistics as a mergeable value.

Partials computed over disjoint sets of readings merge, in any order and any grouping, to exactly
the result of one pass over all of them: counts add, min/max combine, and the sum behind each
mean is kept exact (a non-overlapping float expansion), so floating-point rounding cannot depend
on the split. Duplicates (one reading_id in several raw files) are removed by `dedupe` before
aggregating, so a reading never counts twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from telemetry.domain.readings import Record, encode_record

Num = int | float


def _expansion(values: list[float]) -> tuple[float, ...]:
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
    except OverflowError:
        return (math.fsum(parts) + sum(rest),) if parts else (sum(values),)
    return tuple(parts)


@dataclass(slots=True)
class SignalStats:
    count: int
    min: Num
    max: Num
    sum_parts: tuple[float, ...]

    @classmethod
    def of(cls, values: list[Num]) -> SignalStats:
        return cls(len(values), min(values), max(values), _expansion([float(v) for v in values]))

    def merge(self, other: SignalStats) -> SignalStats:
        return SignalStats(
            self.count + other.count,
            min(self.min, other.min),
            max(self.max, other.max),
            _expansion([*self.sum_parts, *other.sum_parts]),
        )

    @property
    def mean(self) -> float:
        try:
            return math.fsum(self.sum_parts) / self.count
        except OverflowError:
            return math.inf if sum(self.sum_parts) > 0 else -math.inf

    def to_json(self) -> dict[str, Num]:
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.mean}


@dataclass(slots=True)
class VehicleHour:
    readings: int
    first_ts: datetime
    last_ts: datetime
    signals: dict[str, SignalStats] = field(default_factory=dict)

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

    hour: datetime
    vehicle_id: str
    readings: int
    first_ts: datetime
    last_ts: datetime
    signals: dict[str, dict[str, Num]]


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
                hour=hour,
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
    """Aggregate records that are distinct by reading_id (see `dedupe`)."""
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


def dedupe(records: Iterable[Record]) -> list[Record]:
    """One record per reading_id. Should two copies differ, the one received first wins (ties:
    the smaller encoding), so the outcome never depends on file or arrival order."""
    seen: dict[str, Record] = {}
    for r in records:
        prev = seen.get(r.reading_id)
        if prev is None:
            seen[r.reading_id] = r
        elif prev != r and (r.received_at, encode_record(r)) < (
            prev.received_at,
            encode_record(prev),
        ):
            seen[r.reading_id] = r
    return list(seen.values())
