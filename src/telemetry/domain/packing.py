"""Packing records into queue messages (envelopes) and unpacking them in the worker.

An envelope holds the readings of one request that fall in one UTC hour, already encoded as
the lake's JSON lines, so the worker concatenates instead of re-encoding:

    {"v":2,"hour":<epoch s>,"received_at":<epoch ms>,"ts":[<epoch ms>, ...]}\\n
    <partial line>\\n          (version 2 only: the envelope's statistics, see `partials`)
    <record line>\\n
    ...

The header carries each reading's event time so the worker can measure ts -> stored latency
without decoding the lines. The body is UTF-8 text, so every queue backend can carry it.
Version 1 (no partial line) is still read: ingest writes it when an hour's readings are split
over several envelopes, and older ingest processes write nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from telemetry.domain.errors import PoisonMessage

ENVELOPE_VERSION = 1
ENVELOPE_WITH_PARTIAL = 2
_HEADER_OVERHEAD = 64  # {"v":1,"hour":...,"received_at":...,"ts":[]} and the newline
_PER_TS = 15  # 13 digits of epoch ms, a comma, and slack


class EnvelopeHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    hour: int
    received_at: int
    ts: list[int]


_header_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(EnvelopeHeader)
_raw_lines = msgspec.json.Decoder(msgspec.Raw)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One unpacked envelope: the lines of one hour, and what latency needs."""

    hour: int
    payload: bytes
    readings: int
    received_at_ms: int
    ts_ms: list[int]
    receipt: str
    partial: bytes = b""  # the partial line, newline included; empty when the envelope has none


def pack(
    items: Iterable[tuple[int, bytes, int]], received_at_ms: int, max_bytes: int
) -> list[bytes]:
    """Envelopes for `(hour_epoch_s, line_with_newline, ts_ms)` items, each <= max_bytes.

    One envelope per hour, split further only when an hour's lines would exceed max_bytes.
    """
    by_hour: dict[int, tuple[list[bytes], list[int]]] = {}
    for hour, line, ts_ms in items:
        group = by_hour.get(hour)
        if group is None:
            group = by_hour[hour] = ([], [])
        group[0].append(line)
        group[1].append(ts_ms)
    return pack_hours(by_hour, received_at_ms, max_bytes)


def fits_alone(line_bytes: int, max_bytes: int) -> bool:
    """Whether a record line of `line_bytes` (newline included) fits a message on its own."""
    return _HEADER_OVERHEAD + line_bytes + _PER_TS <= max_bytes


def pack_hours(
    by_hour: dict[int, tuple[list[bytes], list[int]]], received_at_ms: int, max_bytes: int
) -> list[bytes]:
    """`pack` for items already grouped: hour_epoch_s -> (lines with newline, ts_ms)."""
    out: list[bytes] = []
    for hour, (lines, ts) in by_hour.items():
        size = _HEADER_OVERHEAD + sum(map(len, lines)) + _PER_TS * len(lines)
        if size <= max_bytes:  # the usual case: one envelope for the hour
            out.append(_envelope(hour, received_at_ms, ts, lines))
            continue
        part: list[bytes] = []
        part_ts: list[int] = []
        size = _HEADER_OVERHEAD
        for line, t in zip(lines, ts, strict=True):
            need = len(line) + _PER_TS
            if not fits_alone(len(line), max_bytes):
                raise ValueError(f"one record of {len(line)} bytes exceeds {max_bytes} bytes")
            if part and size + need > max_bytes:
                out.append(_envelope(hour, received_at_ms, part_ts, part))
                part, part_ts, size = [], [], _HEADER_OVERHEAD
            part.append(line)
            part_ts.append(t)
            size += need
        if part:
            out.append(_envelope(hour, received_at_ms, part_ts, part))
    return out


def pack_joined(
    by_hour: dict[int, tuple[bytes, list[int], bytes | None]], received_at_ms: int,
    max_bytes: int,
) -> list[bytes]:
    """`pack` for lines already joined per hour: hour_epoch_s -> (the lines, each ending in
    a newline and holding none inside, ts_ms, the hour's partial line or None). Split into
    lines only when over max_bytes; an envelope carries the partial only when it holds the
    whole hour and has room for it."""
    out: list[bytes] = []
    for hour, (payload, ts, partial) in by_hour.items():
        size = _HEADER_OVERHEAD + len(payload) + _PER_TS * len(ts)
        if partial is not None and size + len(partial) <= max_bytes:
            out.append(_envelope(hour, received_at_ms, ts, [payload], partial))
        elif size <= max_bytes:
            out.append(_envelope(hour, received_at_ms, ts, [payload]))
        else:
            lines = [line + b"\n" for line in payload.split(b"\n")[:-1]]
            out.extend(pack_hours({hour: (lines, ts)}, received_at_ms, max_bytes))
    return out


def _envelope(
    hour: int, received_at_ms: int, ts: list[int], lines: list[bytes], partial: bytes = b""
) -> bytes:
    v = ENVELOPE_WITH_PARTIAL if partial else ENVELOPE_VERSION
    header = _header_encoder.encode(EnvelopeHeader(v, hour, received_at_ms, ts))
    return b"".join((header, b"\n", partial, *lines))


def unpack(body: bytes, receipt: str) -> Envelope:
    """Raise PoisonMessage when the body is not a well-formed envelope."""
    head, sep, payload = body.partition(b"\n")
    if not sep:
        raise PoisonMessage("no envelope header")
    try:
        h = _header_decoder.decode(head)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"bad envelope header: {exc}") from exc
    partial = b""
    if h.v == ENVELOPE_WITH_PARTIAL:
        line, sep, payload = payload.partition(b"\n")
        if not sep:
            raise PoisonMessage("no partial line after the envelope header")
        partial = line + sep
    elif h.v != ENVELOPE_VERSION:
        raise PoisonMessage(f"unknown envelope version {h.v}")
    if not h.ts or not payload.endswith(b"\n"):
        raise PoisonMessage("envelope line count does not match its header")
    try:
        # JSON syntax of every line, at a fraction of a full decode's cost: a corrupt line in
        # the lake would stop that hour's aggregation.
        values = _raw_lines.decode_lines(payload)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"a record line is not JSON: {exc}") from exc
    # As many values as ts, and nothing but them and one newline each (no blank line, no
    # padding): cheaper than counting the newlines, which cost as much as the decode.
    if len(values) != len(h.ts) or sum(map(len, values)) + len(values) != len(payload):
        raise PoisonMessage("envelope line count does not match its header")
    return Envelope(h.hour, payload, len(h.ts), h.received_at, h.ts, receipt, partial)
