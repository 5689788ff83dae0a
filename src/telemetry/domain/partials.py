"""Partial aggregates made at ingest, so that aggregation need not decode every raw line.

Ingest has each request's readings decoded already. With an envelope (one request's readings of
one hour) that holds many readings per vehicle, it sends that envelope's statistics: per vehicle
the reading ids, first and last `ts`, and per numeric signal count, min, max and the exact sum
(see `aggregation`). Envelopes of many vehicles with a reading or two each get none: their
partial would be as large as the lines, and slower to merge than the lines are to decode.

The worker does not decode partials. For each raw file whose every envelope has one, it keeps a
line `{"file": <raw key>, "envelopes": [<partial>, ...]}` made by concatenation, and writes the
lines of an hour as one object under `partials/` now and then (ADR 0006): a crash or a failed
write loses only the shortcut, never a reading.

Aggregation merges the partials of the files they cover and decodes the rest. The merge is
exact, so the result is byte for byte the one of decoding every line, provided no reading
identity, `(vehicle_id, reading_id)`, occurs twice: the partials cannot say which copy
counts. Repeats in this pipeline are whole envelopes (a message delivered again, a request
sent again); two byte-identical envelope partials whose ids ingest derived from the content
hold the same readings, so one is dropped. Any other repeated identity sends the hour back to
decoding every line. The same reading_id under two vehicles is two readings, never a repeat.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

import msgspec

from telemetry.domain.aggregation import (
    HourAggregate,
    Identity,
    Num,
    SignalStats,
    VehicleHour,
    exact_sum,
    extreme,
)
from telemetry.domain.readings import Record


class SignalPartial(msgspec.Struct, array_like=True, frozen=True, gc=False):
    count: int
    min: Num
    max: Num
    sum: list[float]  # an exact expansion: fsum(sum) is the correctly rounded sum


class VehiclePartial(msgspec.Struct, array_like=True, frozen=True):
    ids: list[str]
    first_ts: datetime
    last_ts: datetime
    signals: dict[str, SignalPartial]


class EnvelopePartial(msgspec.Struct, array_like=True, frozen=True):
    """One envelope's statistics. `derived`: ingest derived every reading id from the
    reading's content, so equal ids mean equal readings."""

    derived: bool
    vehicles: dict[str, VehiclePartial]


class FilePartials(msgspec.Struct, frozen=True):
    """One line of a `partials/` object: the partials of every envelope of one raw file."""

    file: str
    envelopes: list[msgspec.Raw]


# Fewer readings per vehicle than this in an envelope: no partial (see the module's doc).
MIN_READINGS_PER_VEHICLE = 10

_NUMERIC: frozenset[type] = frozenset((int, float))
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EnvelopePartial)
_file_decoder = msgspec.json.Decoder(FilePartials)


def partial_line(
    records: Sequence[Record], derived: bool, min_per_vehicle: int = MIN_READINGS_PER_VEHICLE
) -> bytes | None:
    """The partial of `records` (one envelope's) as a JSON line; None when the envelope holds
    fewer than `min_per_vehicle` readings per vehicle, or a value is beyond what the exact sum
    can hold (aggregation then decodes that file, as it would anyway)."""
    vehicles = {r.vehicle_id for r in records}
    if not worth_a_partial(len(records), len(vehicles), min_per_vehicle):
        return None
    # A column at a time (comprehensions and C builtins), not a Python step per value: this
    # runs on ingest's hot path.
    groups: dict[str, list[Record]] = {}
    if len(vehicles) == 1:
        groups[records[0].vehicle_id] = list(records)
    else:
        for r in records:
            groups.setdefault(r.vehicle_id, []).append(r)
    try:
        partial = EnvelopePartial(derived, {vid: _vehicle(rs) for vid, rs in groups.items()})
    except OverflowError:
        return None
    return _encoder.encode(partial) + b"\n"


def worth_a_partial(
    readings: int, vehicles: int, min_per_vehicle: int = MIN_READINGS_PER_VEHICLE
) -> bool:
    """Whether an envelope of `readings` readings of `vehicles` vehicles gets a partial."""
    return readings >= min_per_vehicle * vehicles


def _vehicle(records: list[Record]) -> VehiclePartial:
    sigs = [r.signals for r in records]
    ts = [r.ts for r in records]
    stats: dict[str, SignalPartial] = {}
    for name in dict.fromkeys(chain.from_iterable(sigs)):
        column: list[Any]
        try:
            column = [s[name] for s in sigs]
        except KeyError:  # not in every reading
            column = [s.get(name) for s in sigs]
        kinds = set(map(type, column))
        if not kinds <= _NUMERIC:  # bool and str are not numeric statistics
            column = [v for v in column if type(v) in _NUMERIC]
            kinds &= _NUMERIC
        if column:
            stats[name] = _signal(column, len(kinds) > 1)
    return VehiclePartial([r.reading_id for r in records], min(ts), max(ts), stats)


def _signal(values: list[Num], mixed: bool) -> SignalPartial:
    return SignalPartial(
        len(values),
        extreme(min, values, mixed),
        extreme(max, values, mixed),
        list(exact_sum(list(map(float, values)))),
    )


def file_line(key: str, partials: Sequence[bytes]) -> bytes:
    """The `partials/` line for the raw file `key` from its envelopes' partial lines, by
    concatenation (the worker does not decode them)."""
    return b"".join(
        (b'{"file":', _encoder.encode(key), b',"envelopes":[',
         b",".join(p.rstrip(b"\n") for p in partials), b"]}\n")
    )


def read_partials(data: bytes, keys: Collection[str]) -> dict[str, list[msgspec.Raw]]:
    """Raw key -> its envelopes' partials (undecoded), for the files of `keys` that a
    `partials/` object covers; raises msgspec.DecodeError when it is not one."""
    return {f.file: f.envelopes for f in _file_decoder.decode_lines(data) if f.file in keys}


class Distinct(NamedTuple):
    """Envelope partials distinct by reading identity, with what the caller checks the rest of
    the hour against."""

    partials: list[EnvelopePartial]
    lines: int  # raw lines they stand for, both copies of a dropped twin
    ids: dict[str, set[str]]  # vehicle_id -> the reading ids behind `partials`

    def add(self, identities: Iterable[Identity]) -> bool:
        """Add identities; False when one of them is there already."""
        ids = self.ids
        for vid, rid in identities:
            mine = ids.get(vid)
            if mine is None:
                ids[vid] = {rid}
            elif rid in mine:
                return False
            else:
                mine.add(rid)
        return True


def distinct_partials(envelopes: Iterable[msgspec.Raw]) -> Distinct | None:
    """The envelopes' partials, one of each byte-identical pair whose ids were derived from
    content, and the number of lines they stand for (both of a pair); None when a reading
    identity still occurs twice (only the lines can settle it)."""
    partials: list[EnvelopePartial] = []
    raws: list[msgspec.Raw] = []
    # The first identity of each envelope -> its index. A twin has the first identity of the one
    # it repeats; any other envelope that shares its first identity repeats a reading anyway.
    # So only twins' bytes are ever compared, and no envelope's bytes are hashed.
    firsts: dict[Identity, int] = {}
    ids: dict[str, set[str]] = {}
    lines = 0
    for raw in envelopes:
        p = _decoder.decode(raw)
        n = 0
        first: Identity | None = None
        for vid, vp in p.vehicles.items():
            n += len(vp.ids)
            if first is None and vp.ids:
                first = (vid, vp.ids[0])
        if first is not None:
            known = firsts.get(first)
            if known is not None and p.derived and raws[known] == raw:  # the same readings
                lines += n
                continue
            firsts.setdefault(first, len(partials))
        for vid, vp in p.vehicles.items():
            mine = ids.get(vid)
            if mine is None:
                mine = ids[vid] = set(vp.ids)
                if len(mine) < len(vp.ids):
                    return None
            else:
                before = len(mine)
                mine.update(vp.ids)
                if len(mine) < before + len(vp.ids):
                    return None
        lines += n
        partials.append(p)
        raws.append(raw)
    return Distinct(partials, lines, ids)


def decode_partials(data: bytes) -> list[EnvelopePartial]:
    """Envelope partial lines; raises msgspec.DecodeError when they are not."""
    return _decoder.decode_lines(data)


def merge_partials(hour: datetime, partials: Iterable[EnvelopePartial]) -> HourAggregate:
    """The aggregate of the readings behind `partials`, which must be distinct by identity;
    mergeable with other partial aggregates of the hour (`HourAggregate.merge`)."""
    readings: dict[str, int] = {}
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    signals: dict[str, dict[str, list[SignalPartial]]] = {}
    for p in partials:
        for vid, vp in p.vehicles.items():
            n = readings.get(vid)
            if n is None:
                readings[vid] = len(vp.ids)
                first[vid], last[vid] = vp.first_ts, vp.last_ts
                mine = signals[vid] = {}
            else:
                readings[vid] = n + len(vp.ids)
                first[vid] = min(first[vid], vp.first_ts)
                last[vid] = max(last[vid], vp.last_ts)
                mine = signals[vid]
            for name, sp in vp.signals.items():
                same = mine.get(name)
                if same is None:
                    mine[name] = [sp]
                else:
                    same.append(sp)
    out = HourAggregate(hour)
    for vid, n in readings.items():
        out.vehicles[vid] = VehicleHour(
            n, first[vid], last[vid], {name: _merged(sps) for name, sps in signals[vid].items()}
        )
    return out


def _merged(parts: list[SignalPartial]) -> SignalStats:
    # The expansions' parts are kept as the values (their exact sum is the sum of the
    # readings): a written hour needs only their fsum, and a merge makes the expansion then.
    if len(parts) == 1:
        p = parts[0]
        return SignalStats(p.count, p.min, p.max, None, p.sum)
    mins = [p.min for p in parts]
    maxes = [p.max for p in parts]
    mixed = len(set(map(type, mins))) > 1 or len(set(map(type, maxes))) > 1
    return SignalStats(
        sum(p.count for p in parts),
        extreme(min, mins, mixed),
        extreme(max, maxes, mixed),
        None,
        list(chain.from_iterable(p.sum for p in parts)),
    )
