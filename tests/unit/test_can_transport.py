"""J1939-21 transport protocol and ISO 15765-2 reassembly (telemetry.adapters.can_transport) on
crafted frame sequences: whole transfers come out whole, broken ones are dropped and counted,
never handed out in part."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.adapters.can_transport import (
    IsoTpTransport,
    J1939Transport,
    Reassembled,
    is_j1939_transport,
    isotp_frame_type,
)

Frame = tuple[float, Any, int, bytes]  # ts, channel, arbitration id, data

DM1 = 0xFECA
TP_CM, TP_DT = 0x1CEC0000, 0x1CEB0000  # priority 7, as J1939-21 recommends


def _cm(sa: int, da: int) -> int:
    return TP_CM | (da << 8) | sa


def _dt(sa: int, da: int) -> int:
    return TP_DT | (da << 8) | sa


def _packets(payload: bytes) -> list[bytes]:
    n = -(-len(payload) // 7)
    padded = payload + b"\xff" * (7 * n - len(payload))
    return [bytes([i + 1]) + padded[7 * i : 7 * i + 7] for i in range(n)]


def bam(payload: bytes, *, sa: int = 0x00, pgn: int = DM1, t0: float = 0.0,
        gap: float = 0.05, channel: Any = 1) -> list[Frame]:
    """A BAM: TP.CM to global, then TP.DT packets `gap` apart (J1939-21: 50-200 ms)."""
    n = -(-len(payload) // 7)
    cm = (bytes([0x20]) + len(payload).to_bytes(2, "little") + bytes([n, 0xFF])
          + pgn.to_bytes(3, "little"))
    frames = [(t0, channel, _cm(sa, 0xFF), cm)]
    for i, p in enumerate(_packets(payload)):
        frames.append((t0 + gap * (i + 1), channel, _dt(sa, 0xFF), p))
    return frames


def rts_cts(payload: bytes, *, sa: int = 0x00, da: int = 0x17, pgn: int = 0xFEE3,
            window: int = 16, t0: float = 0.0, gap: float = 0.01,
            channel: Any = 1) -> list[Frame]:
    """RTS, then per window a CTS from the receiver and its packets, then EndOfMsgAck."""
    size, n = len(payload), -(-len(payload) // 7)
    tail = pgn.to_bytes(3, "little")
    rts = bytes([0x10]) + size.to_bytes(2, "little") + bytes([n, window]) + tail
    frames = [(t0, channel, _cm(sa, da), rts)]
    t = t0
    packets = _packets(payload)
    for start in range(0, n, window):
        count = min(window, n - start)
        t += gap
        cts = bytes([0x11, count, start + 1, 0xFF, 0xFF]) + tail
        frames.append((t, channel, _cm(da, sa), cts))
        for p in packets[start : start + count]:
            t += gap
            frames.append((t, channel, _dt(sa, da), p))
    t += gap
    eom = bytes([0x13]) + size.to_bytes(2, "little") + bytes([n, 0xFF]) + tail
    frames.append((t, channel, _cm(da, sa), eom))
    return frames


def feed_j1939(frames: list[Frame], tp: J1939Transport | None = None,
               end: float | None = None) -> tuple[list[Reassembled], J1939Transport]:
    tp = tp or J1939Transport()
    out = []
    for ts, ch, arb, data in frames:
        assert is_j1939_transport(arb)
        done = tp.feed(ts, ch, arb, data)
        if done is not None:
            out.append(done)
    tp.close(frames[-1][0] if end is None else end)
    return out, tp


def _payload(n: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(n))


# ------------------------------------------------------------------ J1939 BAM


@pytest.mark.parametrize("size", [9, 10, 14, 15, 18, 100, 1784, 1785])
def test_bam_of_9_to_1785_bytes_comes_out_whole(size: int) -> None:
    payload = _payload(size)
    out, tp = feed_j1939(bam(payload, sa=0x03, pgn=DM1))
    assert [m.data for m in out] == [payload]
    m = out[0]
    # The id the message would have in one frame: PGN 0xFECA from source 0x03, priority 7.
    assert (m.arbitration_id, m.is_extended_id) == (0x1CFECA03, True)
    assert m.timestamp == pytest.approx(0.05 * -(-size // 7))  # the last packet's
    assert m.frames == 1 + -(-size // 7)
    assert tp.dropped == {} and tp.stray == 0 and tp.completed == 1


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=9, max_size=1785), sa=st.integers(0, 253),
       gap=st.floats(0.001, 0.2))
def test_bam_round_trip(payload: bytes, sa: int, gap: float) -> None:
    out, tp = feed_j1939(bam(payload, sa=sa, pgn=0xFEEC, gap=gap))
    assert [(m.data, m.arbitration_id & 0xFF) for m in out] == [(payload, sa)]
    assert tp.dropped == {}


def test_two_sources_interleaved_are_reassembled_each() -> None:
    a, b = _payload(30), _payload(50)[::-1]
    fa = bam(a, sa=0x00, t0=0.0)
    fb = bam(b, sa=0x03, t0=0.01)
    frames = sorted(fa + fb, key=lambda f: f[0])
    out, tp = feed_j1939(frames)
    assert {m.arbitration_id & 0xFF: m.data for m in out} == {0x00: a, 0x03: b}
    assert tp.dropped == {}


@settings(max_examples=40, deadline=None)
@given(payloads=st.lists(st.binary(min_size=9, max_size=300), min_size=2, max_size=4),
       offsets=st.lists(st.floats(0, 0.05), min_size=4, max_size=4))
def test_interleaved_sources_round_trip(payloads: list[bytes], offsets: list[float]) -> None:
    frames = [f for sa, (p, t0) in enumerate(zip(payloads, offsets, strict=False))
              for f in bam(p, sa=sa, t0=t0)]
    frames.sort(key=lambda f: f[0])  # stable: each source's own frames keep their order
    out, tp = feed_j1939(frames)
    assert {m.arbitration_id & 0xFF: m.data for m in out} == dict(enumerate(payloads))
    assert tp.dropped == {}


def test_the_same_source_on_two_channels_is_two_transfers() -> None:
    a, b = _payload(20), _payload(20)[::-1]
    frames = sorted(bam(a, channel="can0") + bam(b, channel="can1", t0=0.001),
                    key=lambda f: f[0])
    out, _ = feed_j1939(frames)
    assert {m.channel: m.data for m in out} == {"can0": a, "can1": b}


def test_a_missing_packet_drops_the_transfer_and_nothing_half_comes_out() -> None:
    frames = bam(_payload(40))  # CM + 6 packets
    del frames[3]  # packet 3
    out, tp = feed_j1939(frames)
    assert out == []
    assert tp.dropped == {"out_of_sequence": 1}
    assert tp.stray == 2  # packet 4 ended the transfer; 5 and 6 belong to none


def test_a_repeated_sequence_number_drops_the_transfer() -> None:
    frames = bam(_payload(40))
    frames.insert(3, frames[2])  # packet 2 twice
    out, tp = feed_j1939(frames)
    assert out == [] and tp.dropped == {"out_of_sequence": 1}


def test_a_bam_packet_after_t1_times_the_transfer_out() -> None:
    frames = bam(_payload(20), gap=0.05)
    late = [(ts + (0.8 if i == 3 else 0), *rest) for i, (ts, *rest) in enumerate(frames)]
    out, tp = feed_j1939(late)  # 0.85 s between packets 2 and 3: T1 is 0.75 s
    assert out == [] and tp.dropped == {"timeout": 1}
    # Within T1 (0.7 s apart) the transfer is whole, however slow for a BAM sender.
    slow = bam(_payload(20), gap=0.7)
    out, tp = feed_j1939(slow)
    assert [m.data for m in out] == [_payload(20)]


def test_a_new_announcement_interrupts_the_transfer_in_progress() -> None:
    first = bam(_payload(40), t0=0.0)[:3]  # CM and two packets
    second = bam(_payload(20), t0=0.2)
    out, tp = feed_j1939(first + second)
    assert [m.data for m in out] == [_payload(20)]
    assert tp.dropped == {"interrupted": 1}
    # After T1 the first had timed out already: that is the reason counted.
    out, tp = feed_j1939(first + bam(_payload(20), t0=0.9))
    assert [m.data for m in out] == [_payload(20)]
    assert tp.dropped == {"timeout": 1}


@pytest.mark.parametrize(
    ("cm", "da"),
    [
        (bytes([0x20, 8, 0, 2, 0xFF, 0xCA, 0xFE, 0]), 0xFF),  # 8 bytes: one frame's worth
        (bytes([0x20, 0xFA, 0x06, 255, 0xFF, 0xCA, 0xFE, 0]), 0xFF),  # 1786 bytes
        (bytes([0x20, 20, 0, 4, 0xFF, 0xCA, 0xFE, 0]), 0xFF),  # 20 bytes are 3 packets, not 4
        (bytes([0x20, 20, 0, 3, 0xFF, 0xCA, 0xFE, 0]), 0x17),  # BAM to one destination
        (bytes([0x10, 20, 0, 3, 0xFF, 0xCA, 0xFE, 0]), 0xFF),  # RTS to global
    ],
)
def test_announcements_j1939_21_forbids_are_invalid(cm: bytes, da: int) -> None:
    tp = J1939Transport()
    assert tp.feed(0.0, 1, _cm(0, da), cm) is None
    assert tp.dropped == {"invalid": 1} and tp.open == {}


def test_the_log_ending_mid_transfer_drops_it() -> None:
    frames = bam(_payload(40))[:4]
    _, tp = feed_j1939(frames)  # the log ends with the last packet seen
    assert tp.dropped == {"incomplete": 1}
    _, tp = feed_j1939(frames, end=frames[-1][0] + 5)  # ...or long after it
    assert tp.dropped == {"timeout": 1}


# ------------------------------------------------------------------ J1939 RTS/CTS


@pytest.mark.parametrize(("size", "window"), [(9, 16), (50, 1), (100, 4), (1785, 255),
                                               (1785, 16)])
def test_rts_cts_of_9_to_1785_bytes_comes_out_whole(size: int, window: int) -> None:
    payload = _payload(size)
    out, tp = feed_j1939(rts_cts(payload, sa=0x00, da=0x17, pgn=0xFEE3, window=window))
    assert [m.data for m in out] == [payload]
    assert out[0].arbitration_id == 0x1CFEE300
    assert tp.dropped == {} and tp.stray == 0


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(min_size=9, max_size=1785), window=st.integers(1, 255),
       da=st.integers(0, 253))
def test_rts_cts_round_trip(payload: bytes, window: int, da: int) -> None:
    out, tp = feed_j1939(rts_cts(payload, sa=0xF9, da=da, window=window))
    assert [m.data for m in out] == [payload]
    assert tp.dropped == {}


def test_rts_cts_pdu1_pgn_carries_the_destination() -> None:
    out, _ = feed_j1939(rts_cts(_payload(20), sa=0x00, da=0x17, pgn=0xEF00))  # PF < 240
    assert out[0].arbitration_id == 0x1CEF1700


def test_rts_cts_per_source_and_destination() -> None:
    a, b = _payload(30), _payload(30)[::-1]
    frames = sorted(rts_cts(a, sa=0x00, da=0x17) + rts_cts(b, sa=0x00, da=0x21, t0=0.005),
                    key=lambda f: f[0])
    out, tp = feed_j1939(frames)
    assert sorted(m.data for m in out) == sorted([a, b]) and tp.dropped == {}


def test_an_abort_from_either_side_drops_the_connection() -> None:
    for sender in (0x17, 0x00):  # the receiver aborts, or the originator
        frames = rts_cts(_payload(40), sa=0x00, da=0x17, window=2)
        other = 0x00 if sender == 0x17 else 0x17
        abort = bytes([0xFF, 3, 0xFF, 0xFF, 0xFF]) + (0xFEE3).to_bytes(3, "little")
        frames.insert(4, (frames[3][0] + 0.001, 1, _cm(sender, other), abort))
        out, tp = feed_j1939(frames)
        assert out == [] and tp.dropped == {"aborted": 1}


def test_a_cts_may_ask_for_packets_again() -> None:
    payload = _payload(30)  # 5 packets
    frames = rts_cts(payload, window=5)
    tail = (0xFEE3).to_bytes(3, "little")
    # After packet 3, the receiver asks again from packet 2 (it lost it): 2..5 follow.
    redo = bytes([0x11, 4, 2, 0xFF, 0xFF]) + tail
    head = frames[:5]  # RTS, CTS, packets 1-3
    t = head[-1][0]
    again = [(t + 0.01, 1, _cm(0x17, 0x00), redo)]
    again += [(t + 0.02 + 0.01 * i, 1, _dt(0x00, 0x17), p)
              for i, p in enumerate(_packets(payload)[1:])]
    out, tp = feed_j1939(head + again)
    assert [m.data for m in out] == [payload] and tp.dropped == {}


def test_rts_cts_timeouts_t2_t3_t4() -> None:
    payload = _payload(30)
    # T3: no CTS within 1.25 s of the RTS (the data comes, but the sender had given up).
    frames = rts_cts(payload)
    late = [frames[0]] + [(ts + 1.3, *rest) for ts, *rest in frames[1:]]
    assert feed_j1939(late)[1].dropped == {"timeout": 1}
    # T2: data more than 1.25 s after the CTS.
    frames = rts_cts(payload)
    late = frames[:2] + [(ts + 1.3, *rest) for ts, *rest in frames[2:]]
    assert feed_j1939(late)[1].dropped == {"timeout": 1}
    # T4: a CTS(0) holds the connection 1.05 s at most.
    frames = rts_cts(payload)
    tail = (0xFEE3).to_bytes(3, "little")
    hold = bytes([0x11, 0, 0xFF, 0xFF, 0xFF]) + tail
    held = [frames[0], (0.01, 1, _cm(0x17, 0x00), hold)]
    ok = held + [(ts + 1.0, *rest) for ts, *rest in frames[1:]]
    assert [m.data for m in feed_j1939(ok)[0]] == [payload]
    late = held + [(ts + 1.1, *rest) for ts, *rest in frames[1:]]
    assert feed_j1939(late)[1].dropped == {"timeout": 1}


def test_packets_beyond_the_window_a_cts_allowed_are_out_of_sequence() -> None:
    payload = _payload(30)
    frames = rts_cts(payload, window=5)
    tail = (0xFEE3).to_bytes(3, "little")
    small = bytes([0x11, 2, 1, 0xFF, 0xFF]) + tail  # the receiver asked for 2 only
    frames[1] = (frames[1][0], 1, frames[1][2], small)
    out, tp = feed_j1939(frames)
    assert out == [] and tp.dropped == {"out_of_sequence": 1}


# ------------------------------------------------------------------ ISO-TP


def isotp(payload: bytes) -> list[bytes]:
    """ISO 15765-2 frames of a payload on classic CAN, padded with 0xAA."""
    n = len(payload)
    if n <= 7:
        return [(bytes([n]) + payload).ljust(8, b"\xaa")]
    frames = [bytes([0x10 | (n >> 8), n & 0xFF]) + payload[:6]]
    sn = 1
    for i in range(6, n, 7):
        frames.append((bytes([0x20 | sn]) + payload[i : i + 7]).ljust(8, b"\xaa"))
        sn = (sn + 1) & 0x0F
    return frames


def feed_isotp(frames: list[bytes], tp: IsoTpTransport | None = None, gap: float = 0.01,
               arb: int = 0x7E8) -> tuple[list[Reassembled], IsoTpTransport]:
    tp = tp or IsoTpTransport()
    out = []
    for i, f in enumerate(frames):
        assert isotp_frame_type(f) is not None
        done = tp.feed(i * gap, 1, arb, False, f)
        if done is not None:
            out.append(done)
    tp.close((len(frames) - 1) * gap)
    return out, tp


@pytest.mark.parametrize("size", [1, 6, 7, 8, 13, 62, 111, 112, 4095])
def test_isotp_of_1_to_4095_bytes_comes_out_whole(size: int) -> None:
    payload = _payload(size)
    frames = isotp(payload)
    out, tp = feed_isotp(frames)
    assert [m.data for m in out] == [payload]
    assert out[0].frames == len(frames) and out[0].timestamp == pytest.approx(
        0.01 * (len(frames) - 1))
    assert tp.dropped == {} and tp.completed == (size > 7)


@settings(max_examples=80, deadline=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=4095), min_size=1, max_size=3))
def test_isotp_round_trip(payloads: list[bytes]) -> None:
    frames = [f for p in payloads for f in isotp(p)]
    out, tp = feed_isotp(frames)
    assert [m.data for m in out] == payloads
    assert tp.dropped == {} and tp.stray == 0


def test_isotp_wrong_sequence_number_drops_the_reply() -> None:
    frames = isotp(_payload(62))
    frames[3] = bytes([0x25]) + frames[3][1:]  # SN 5 where 3 was due
    out, tp = feed_isotp(frames)
    assert out == [] and tp.dropped == {"out_of_sequence": 1}
    assert tp.stray == len(frames) - 4  # the rest belong to no open transfer


def test_isotp_second_first_frame_mid_transfer_restarts() -> None:
    first, second = isotp(_payload(62)), isotp(_payload(40)[::-1])
    out, tp = feed_isotp(first[:3] + second)
    assert [m.data for m in out] == [_payload(40)[::-1]]
    assert tp.dropped == {"interrupted": 1}
    # A first frame with no consecutive frame within N_Cr, then the next reply (the sample
    # Kona log has 29): the first timed out.
    out, tp = feed_isotp(first[:1] + second, gap=1.5)
    assert out == [] and tp.dropped == {"timeout": 2}
    tp = IsoTpTransport()
    assert tp.feed(0.0, 1, 0x7EC, False, first[0]) is None
    done = [tp.feed(2.0 + i * 0.01, 1, 0x7EC, False, f) for i, f in enumerate(second)]
    assert done[-1] is not None and done[-1].data == _payload(40)[::-1]
    assert tp.dropped == {"timeout": 1}


def test_isotp_single_frame_mid_transfer_ends_it() -> None:
    out, tp = feed_isotp(isotp(_payload(62))[:3] + isotp(b"\x41\x0d\x3c"))
    assert [m.data for m in out] == [b"\x41\x0d\x3c"]
    assert tp.dropped == {"interrupted": 1}


def test_isotp_timeout_between_consecutive_frames() -> None:
    frames = isotp(_payload(30))
    tp = IsoTpTransport()
    times = [0.0, 0.01, 1.2, 1.21, 1.22]  # N_Cr is 1 s
    out = [tp.feed(t, 1, 0x7EC, False, f) for t, f in zip(times, frames, strict=True)]
    assert out == [None] * 5 and tp.dropped == {"timeout": 1} and tp.stray == 2


def test_isotp_ids_and_channels_are_separate_transfers() -> None:
    a, b = isotp(_payload(20)), isotp(_payload(20)[::-1])
    tp = IsoTpTransport()
    out = []
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        out.append(tp.feed(i * 0.01, 1, 0x7EC, False, fa))
        out.append(tp.feed(i * 0.01, 1, 0x7BB, False, fb))
    assert {m.arbitration_id: m.data for m in out if m} == {0x7EC: _payload(20),
                                                           0x7BB: _payload(20)[::-1]}


@pytest.mark.parametrize("frame", [
    "0041000000000000",  # single frame of length 0
    "0841000000000000",  # single frame longer than the frame
    "1007410D00000000",  # a first frame of 7 bytes: a single frame's worth
    "1014490201",  # a first frame shorter than 8 bytes
])
def test_isotp_malformed_frames_are_invalid(frame: str) -> None:
    tp = IsoTpTransport()
    assert tp.feed(0.0, 1, 0x7E8, False, bytes.fromhex(frame)) is None
    assert tp.dropped == {"invalid": 1}


def test_isotp_consecutive_frame_without_a_first_is_stray_and_types() -> None:
    tp = IsoTpTransport()
    assert tp.feed(0.0, 1, 0x7E8, False, bytes.fromhex("2101020304050607")) is None
    assert tp.feed(0.0, 1, 0x7E8, False, bytes.fromhex("3000000000000000")) is None  # FC
    assert tp.stray == 2
    assert [isotp_frame_type(bytes([b])) for b in (0x03, 0x10, 0x21, 0x30, 0x40)] == [
        0, 1, 2, 3, None]
    assert isotp_frame_type(b"") is None


def test_isotp_can_fd_escapes() -> None:
    tp = IsoTpTransport()
    sf = bytes([0x00, 20]) + _payload(20) + bytes(2)  # a 24-byte CAN FD frame
    assert tp.feed(0.0, 1, 0x7E8, False, sf).data == _payload(20)  # type: ignore[union-attr]
    big = _payload(5000)
    ff = bytes([0x10, 0x00]) + len(big).to_bytes(4, "big") + big[:58]
    assert tp.feed(0.0, 1, 0x7E8, False, ff) is None
    done = None
    sn, i = 1, 58
    while i < len(big):
        done = tp.feed(0.001, 1, 0x7E8, False, bytes([0x20 | sn]) + big[i : i + 63])
        sn, i = (sn + 1) & 0x0F, i + 63
    assert done is not None and done.data == big
