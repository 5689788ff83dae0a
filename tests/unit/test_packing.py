"""Packing records into queue envelopes and unpacking them (contract section 4: many readings
travel in one message, within the backend's message size limit)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.domain.errors import PoisonMessage
from telemetry.domain.packing import pack, pack_joined, unpack

H0 = int(datetime(2026, 11, 29, 1, tzinfo=UTC).timestamp())  # an hour, epoch seconds
H1 = H0 + 3600
RECEIVED_MS = (H1 + 1800) * 1000
Item = tuple[int, bytes, int]


def item(hour: int, n: int, size: int = 0) -> Item:
    line = b'{"reading_id":"r%d","pad":"%s"}\n' % (n, b"x" * size)
    return hour, line, hour * 1000 + n


def split_lines(payload: bytes) -> list[bytes]:
    """Lines with their newline; only b"\\n" ends a line (not b"\\r", unlike splitlines)."""
    return [line + b"\n" for line in payload.split(b"\n")[:-1]]


def lines_of(body: bytes) -> list[bytes]:
    return split_lines(unpack(body, "rcpt").payload)


def test_round_trip_of_one_envelope() -> None:
    items = [item(H0, i) for i in range(5)]
    (body,) = pack(items, RECEIVED_MS, 256 * 1024)
    part = unpack(body, "receipt-1")
    assert part.hour == H0
    assert part.payload == b"".join(line for _, line, _ in items)
    assert part.readings == 5
    assert part.ts_ms == [t for *_, t in items]
    assert part.received_at_ms == RECEIVED_MS
    assert part.receipt == "receipt-1"
    body.decode("utf-8")  # every queue backend can carry it as text


def test_one_envelope_per_hour() -> None:
    items = [item(H0, 1), item(H1, 2), item(H0, 3), item(H1, 4), item(H0 - 3600, 5)]
    bodies = pack(items, RECEIVED_MS, 256 * 1024)
    parts = [unpack(b, "r") for b in bodies]
    assert sorted(p.hour for p in parts) == [H0 - 3600, H0, H1]
    by_hour = {p.hour: p for p in parts}
    assert by_hour[H0].payload == item(H0, 1)[1] + item(H0, 3)[1]  # request order kept
    assert by_hour[H1].ts_ms == [item(H1, 2)[2], item(H1, 4)[2]]


def test_nothing_packs_into_nothing() -> None:
    assert pack([], RECEIVED_MS, 1024) == []


def test_envelopes_split_at_max_bytes_and_never_exceed_it() -> None:
    items = [item(H0, i, size=100) for i in range(50)]
    max_bytes = 1024
    bodies = pack(items, RECEIVED_MS, max_bytes)
    assert len(bodies) > 1
    assert all(len(b) <= max_bytes for b in bodies)
    assert [line for b in bodies for line in lines_of(b)] == [line for _, line, _ in items]
    assert {unpack(b, "r").hour for b in bodies} == {H0}


def test_a_record_bigger_than_max_bytes_raises() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        pack([item(H0, 1), item(H0, 2, size=2000)], RECEIVED_MS, 1024)


def test_a_record_that_fits_alone_packs_alone() -> None:
    big = item(H0, 1, size=800)
    bodies = pack([item(H0, 0), big, item(H0, 2)], RECEIVED_MS, 1024)
    assert all(len(b) <= 1024 for b in bodies)
    assert [line for b in bodies for line in lines_of(b)] == [
        item(H0, 0)[1],
        big[1],
        item(H0, 2)[1],
    ]


GOOD_BODY = pack([item(H0, 1), item(H0, 2)], RECEIVED_MS, 4096)[0]
HEADER, _, PAYLOAD = GOOD_BODY.partition(b"\n")


BAD_ENVELOPES = {
    "empty": b"",
    "no newline": b"garbage",
    "garbage header": b"garbage\n",
    "blank header": b"\n",
    "empty object": b"{}\n",
    "array header": b"[]\n" + PAYLOAD,
    "not utf-8": b"\xff\xfe\n" + PAYLOAD,
    "header without newline": b'{"v":1,"hour":1,"received_at":1,"ts":[1,2]}',
    "unknown version": HEADER.replace(b'"v":1', b'"v":2') + b"\n" + PAYLOAD,
    "version as string": HEADER.replace(b'"v":1', b'"v":"1"') + b"\n" + PAYLOAD,
    "unknown header field": HEADER[:-1] + b',"extra":1}\n' + PAYLOAD,
    "more lines than ts": HEADER + b"\n" + PAYLOAD + item(H0, 3)[1],
    "fewer lines than ts": HEADER + b"\n" + PAYLOAD.split(b"\n")[0] + b"\n",
    "last line cut short": HEADER + b"\n" + PAYLOAD[:-1],
    "header and no lines": HEADER + b"\n",
    "a blank line between the lines": HEADER + b"\n" + PAYLOAD.replace(b"\n", b"\n\n", 1),
    "a line padded with spaces": HEADER + b"\n" + b"  " + PAYLOAD,
    "a line that is not JSON": HEADER + b"\n" + PAYLOAD.replace(b"}\n", b"\n", 1),
    "two values on one line": HEADER + b"\n" + PAYLOAD.replace(b"}\n", b"} 1\n", 1),
    "a partial line and no lines": HEADER.replace(b'"v":1', b'"v":2') + b"\n{}\n",
    "empty envelope": b'{"v":1,"hour":1,"received_at":1,"ts":[]}\n',
}


@pytest.mark.parametrize("body", BAD_ENVELOPES.values(), ids=BAD_ENVELOPES.keys())
def test_unpack_rejects_bad_envelopes_as_poison(body: bytes) -> None:
    with pytest.raises(PoisonMessage):
        unpack(body, "r")


def test_the_good_body_used_above_unpacks() -> None:
    assert unpack(GOOD_BODY, "r").readings == 2


# ---------------------------------------------------------------- property

# Lines as the lake writes them: one JSON object, no newline inside, one at the end.
lines = st.text(max_size=300).map(lambda t: msgspec.json.encode({"x": t}) + b"\n")


@st.composite
def packing_input(draw: st.DrawFn) -> tuple[list[Item], int]:
    hours = draw(st.lists(st.integers(0, 24 * 365 * 80), min_size=1, max_size=4, unique=True))
    hours = [946_684_800 + 3600 * h for h in hours]  # hours from 2000 to 2080
    items: list[Item] = []
    for _ in range(draw(st.integers(0, 40))):
        hour = draw(st.sampled_from(hours))
        ts_ms = hour * 1000 + draw(st.integers(0, 3_599_999))
        items.append((hour, draw(lines), ts_ms))
    longest = max((len(line) for _, line, _ in items), default=0)
    max_bytes = draw(st.integers(longest + 79, longest + 4000))  # every line fits alone
    return items, max_bytes


@settings(max_examples=100, deadline=None)
@given(packing_input())
def test_packing_loses_nothing_duplicates_nothing_and_keeps_hours_apart(
    case: tuple[list[Item], int],
) -> None:
    items, max_bytes = case
    bodies = pack(items, RECEIVED_MS, max_bytes)
    got: list[Item] = []
    for body in bodies:
        assert len(body) <= max_bytes
        part = unpack(body, "r")
        payload_lines = split_lines(part.payload)
        assert len(payload_lines) == part.readings == len(part.ts_ms)
        assert part.received_at_ms == RECEIVED_MS
        for line, ts_ms in zip(payload_lines, part.ts_ms, strict=True):
            assert ts_ms // 3_600_000 * 3600 == part.hour  # one hour per envelope
            got.append((part.hour, line, ts_ms))
    assert Counter(got) == Counter(items)
    # and within an hour, in the order given
    for hour in {h for h, _, _ in items}:
        assert [i for i in got if i[0] == hour] == [i for i in items if i[0] == hour]


@settings(max_examples=60, deadline=None)
@given(packing_input())
def test_an_hour_that_fits_is_one_envelope(case: tuple[list[Item], int]) -> None:
    items, _ = case
    bodies = pack(items, RECEIVED_MS, 1024 * 1024)
    assert sorted(unpack(b, "r").hour for b in bodies) == sorted({h for h, _, _ in items})


def test_header_is_the_documented_json() -> None:
    header = msgspec.json.decode(HEADER)
    assert header == {
        "v": 1,
        "hour": H0,
        "received_at": RECEIVED_MS,
        "ts": [item(H0, 1)[2], item(H0, 2)[2]],
    }


@settings(max_examples=100, deadline=None)
@given(packing_input())
def test_packing_joined_lines_gives_what_pack_gives(case: tuple[list[Item], int]) -> None:
    """Ingest encodes an hour's lines in one piece; the envelopes are the same, split too."""
    items, max_bytes = case
    joined: dict[int, tuple[bytes, list[int], bytes | None]] = {}
    for hour, line, ts_ms in items:
        payload, ts, _ = joined.get(hour, (b"", [], None))
        joined[hour] = (payload + line, [*ts, ts_ms], None)
    assert pack_joined(joined, RECEIVED_MS, max_bytes) == pack(items, RECEIVED_MS, max_bytes)


@settings(max_examples=100, deadline=None)
@given(packing_input(), st.binary(max_size=200))
def test_a_partial_travels_with_the_whole_hour_only(
    case: tuple[list[Item], int], blob: bytes
) -> None:
    """The partial line is the statistics of exactly the envelope's lines: it goes where the
    envelope holds the hour's every line, and nowhere else; the lines are untouched."""
    items, max_bytes = case
    partial = b'{"p":"' + blob.replace(b"\n", b"n") + b'"}\n'
    joined: dict[int, tuple[bytes, list[int], bytes | None]] = {}
    for hour, line, ts_ms in items:
        payload, ts, _ = joined.get(hour, (b"", [], None))
        joined[hour] = (payload + line, [*ts, ts_ms], partial)
    bodies = pack_joined(joined, RECEIVED_MS, max_bytes)
    parts = [unpack(b, "r") for b in bodies]
    assert all(len(b) <= max_bytes for b in bodies)
    plain = [unpack(b, "r") for b in pack(items, RECEIVED_MS, max_bytes)]
    assert b"".join(p.payload for p in parts) == b"".join(p.payload for p in plain)
    per_hour = Counter(p.hour for p in parts)
    for p in parts:
        if p.partial:
            assert p.partial == partial
            assert per_hour[p.hour] == 1 and p.payload == joined[p.hour][0]
    # with room to spare, every hour carries it
    roomy = [unpack(b, "r") for b in pack_joined(joined, RECEIVED_MS, 1024 * 1024)]
    assert all(p.partial == partial for p in roomy)
