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
    by_hour: dict[int, list[tuple[bytes, int]]] = {}
    for hour, line, ts_ms in items:
        by_hour.setdefault(hour, []).append((line, ts_ms))
    out: list[bytes] = []
    for hour, entries in by_hour.items():
        lines: list[bytes] = []
        ts: list[int] = []
        size = _HEADER_OVERHEAD
        for line, t in entries:
            need = len(line) + _PER_TS
            if need + _HEADER_OVERHEAD > max_bytes:
                raise ValueError(f"one record of {len(line)} bytes exceeds {max_bytes} bytes")
            if lines and size + need > max_bytes:
                out.append(_envelope(hour, received_at_ms, ts, lines))
                lines, ts, size = [], [], _HEADER_OVERHEAD
            lines.append(line)
            ts.append(t)
            size += need
        if lines:
            out.append(_envelope(hour, received_at_ms, ts, lines))
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
