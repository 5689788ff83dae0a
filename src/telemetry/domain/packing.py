"""Packing records into queue messages (envelopes) and unpacking them in the worker.

An envelope holds the readings of one request that fall in one UTC hour, already encoded as
the lake's JSON lines, so the worker concatenates instead of re-encoding:

    {"v":1,"hour":<epoch s>,"received_at":<epoch ms>,"ts":[<epoch ms>, ...]}\\n
    <record line>\\n
    ...

The header carries each reading's event time so the worker can measure ts -> stored latency
without decoding the lines. The body is UTF-8 text, so every queue backend can carry it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from telemetry.domain.errors import PoisonMessage

ENVELOPE_VERSION = 1
_HEADER_OVERHEAD = 64  # {"v":1,"hour":...,"received_at":...,"ts":[]} and the newline
_PER_TS = 15  # 13 digits of epoch ms, a comma, and slack


class EnvelopeHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    hour: int
    received_at: int
    ts: list[int]


_header_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(EnvelopeHeader)


@dataclass(frozen=True, slots=True)
class Part:
    """One unpacked envelope: the lines of one hour, and what latency needs."""

    hour: int
    payload: bytes
    readings: int
    received_at_ms: int
    ts_ms: list[int]
    receipt: str


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
    by_hour: dict[int, tuple[bytes, list[int]]], received_at_ms: int, max_bytes: int
) -> list[bytes]:
    """`pack` for lines already joined per hour: hour_epoch_s -> (the lines, each ending in
    a newline and holding none inside, ts_ms). Split into lines only when over max_bytes."""
    out: list[bytes] = []
    for hour, (payload, ts) in by_hour.items():
        if _HEADER_OVERHEAD + len(payload) + _PER_TS * len(ts) <= max_bytes:
            out.append(_envelope(hour, received_at_ms, ts, [payload]))
        else:
            lines = [line + b"\n" for line in payload.split(b"\n")[:-1]]
            out.extend(pack_hours({hour: (lines, ts)}, received_at_ms, max_bytes))
    return out


def _envelope(hour: int, received_at_ms: int, ts: list[int], lines: list[bytes]) -> bytes:
    header = _header_encoder.encode(EnvelopeHeader(ENVELOPE_VERSION, hour, received_at_ms, ts))
    return header + b"\n" + b"".join(lines)


def unpack(body: bytes, receipt: str) -> Part:
    """Raise PoisonMessage when the body is not a well-formed envelope."""
    head, sep, payload = body.partition(b"\n")
    if not sep:
        raise PoisonMessage("no envelope header")
    try:
        h = _header_decoder.decode(head)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"bad envelope header: {exc}") from exc
    if h.v != ENVELOPE_VERSION:
        raise PoisonMessage(f"unknown envelope version {h.v}")
    if not h.ts or payload.count(b"\n") != len(h.ts) or not payload.endswith(b"\n"):
        raise PoisonMessage("envelope line count does not match its header")
    return Part(h.hour, payload, len(h.ts), h.received_at, h.ts, receipt)
