"""Multi-frame CAN transport protocols, reassembled as a passive listener reads them in a log.

- J1939-21 transport protocol: TP.CM (BAM, RTS, CTS, EndOfMsgAck, Abort) and TP.DT, 9 to 1785
  bytes, one transfer at a time per source address (BAM) or per source and destination
  (RTS/CTS), each on its own channel.
- ISO 15765-2 (ISO-TP): single, first, consecutive and flow-control frames, 1 to 4095 bytes
  (longer with the CAN FD escapes), one transfer at a time per id and channel.

Pure logic: frames go in as plain values, in log order, and whole messages come out, so any
sequence can be crafted in a test. A transfer that does not complete exactly as the protocol
says (aborted, interrupted by a new announcement, a packet missing, repeated or out of order,
a timeout) is dropped and counted by reason in `dropped`, never handed out in part. Frames of
no open transfer (the log started mid-transfer, or the transfer was dropped) count as `stray`.

A reassembled message carries the timestamp of its last frame: the instant it was complete,
when a receiver could have acted on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

# Why a transfer was dropped.
ABORTED = "aborted"  # TP.CM Connection Abort
TIMEOUT = "timeout"  # the next frame came later than the protocol's timeout
OUT_OF_SEQUENCE = "out_of_sequence"  # a packet missing, repeated or out of order
INTERRUPTED = "interrupted"  # a new announcement on the same connection before the end
INVALID = "invalid"  # an announcement the protocol forbids (size, packet count, destination)
INCOMPLETE = "incomplete"  # the log ended mid-transfer, within the timeout

J1939_TP_CM = 0xEC  # PF of TP.CM, PGN 60416 (0xEC00)
J1939_TP_DT = 0xEB  # PF of TP.DT, PGN 60160 (0xEB00)
J1939_MIN_SIZE, J1939_MAX_SIZE = 9, 1785
_GLOBAL = 0xFF
_BAM, _RTS, _CTS, _EOMA, _ABORT = 0x20, 0x10, 0x11, 0x13, 0xFF


@dataclass(frozen=True, slots=True)
class J1939Timeouts:
    """J1939-21 timeouts in seconds. A listener drops a transfer when the party waiting on
    the other would have given up: T1 between data packets (BAM too), T2 from a CTS to its
    data, T3 from an RTS or a window's last packet to the next CTS, T4 from a CTS(0) "hold" to
    the next CTS. Tr (200 ms response time) and the 50-200 ms BAM packet spacing bind senders;
    data that arrives faster or within the receivers' timeouts is whole, so it is kept."""

    t1: float = 0.75
    t2: float = 1.25
    t3: float = 1.25
    t4: float = 1.05


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A message rebuilt from a transfer (or an ISO-TP single frame).

    `arbitration_id`: for J1939, the 29-bit id the message would have as one frame (the
    transfer's priority, its PGN with the destination in PDU1's PS byte, the sender's source
    address), so a DBC matches it by PGN; for ISO-TP, the id the frames came on.
    """

    timestamp: float  # the last frame's
    channel: Hashable
    arbitration_id: int
    is_extended_id: bool
    data: bytes
    frames: int  # frames that carried it, announcements included


@dataclass(slots=True)
class _J1939Transfer:
    bam: bool
    priority: int
    pgn: int
    size: int
    packets: int
    deadline: float
    window_end: int  # last packet the latest CTS asked for (all of them for BAM)
    data: bytearray = field(default_factory=bytearray)
    next_seq: int = 1
    frames: int = 1


def is_j1939_transport(arbitration_id: int) -> bool:
    """A 29-bit id of TP.CM or TP.DT (data page 0)."""
    return (arbitration_id >> 16) & 0x3FF in (J1939_TP_CM, J1939_TP_DT)


class J1939Transport:
    """J1939-21 BAM and RTS/CTS reassembly for every source, destination and channel at once."""

    def __init__(self, timeouts: J1939Timeouts | None = None) -> None:
        self.timeouts = timeouts or J1939Timeouts()
        self.open: dict[tuple[Hashable, int, int], _J1939Transfer] = {}
        self.dropped: Counter[str] = Counter()
        self.stray = 0  # frames of no open transfer
        self.completed = 0

    def feed(self, ts: float, channel: Hashable, arbitration_id: int,
             data: bytes) -> Reassembled | None:
        """One TP.CM or TP.DT frame (see `is_j1939_transport`); the message it completes."""
        pf = (arbitration_id >> 16) & 0xFF
        da = (arbitration_id >> 8) & 0xFF
        sa = arbitration_id & 0xFF
        if pf == J1939_TP_CM:
            self._control(ts, channel, (arbitration_id >> 26) & 7, sa, da, data)
            return None
        return self._data(ts, channel, sa, da, data)

    def close(self, ts: float) -> None:
        """The log ended at `ts`: what is still open is dropped (timed out, or cut off)."""
        for t in self.open.values():
            self.dropped[TIMEOUT if ts > t.deadline else INCOMPLETE] += 1
        self.open.clear()

    def _drop(self, key: tuple[Hashable, int, int], reason: str) -> None:
        del self.open[key]
        self.dropped[reason] += 1

    def _control(self, ts: float, channel: Hashable, priority: int, sa: int, da: int,
                 d: bytes) -> None:
        if len(d) < 8:
            self.stray += 1
            return
        kind = d[0]
        pgn = int.from_bytes(d[5:8], "little") & 0x3FFFF
        if kind in (_BAM, _RTS):
            key = (channel, sa, da)
            old = self.open.get(key)
            if old is not None:  # given up on already, or cut short by this announcement
                self._drop(key, TIMEOUT if ts > old.deadline else INTERRUPTED)
            size, packets = int.from_bytes(d[1:3], "little"), d[3]
            bam = kind == _BAM
            if (not J1939_MIN_SIZE <= size <= J1939_MAX_SIZE or packets != -(-size // 7)
                    or bam != (da == _GLOBAL)):
                self.dropped[INVALID] += 1
                return
            deadline = ts + (self.timeouts.t1 if bam else self.timeouts.t3)
            self.open[key] = _J1939Transfer(bam, priority, pgn, size, packets, deadline,
                                            packets if bam else 0)
            return
        # CTS and EndOfMsgAck come from the receiver: the connection is (originator=da, sa).
        if kind in (_CTS, _EOMA):
            key = (channel, da, sa)
            t = self.open.get(key)
            if t is None or t.bam or t.pgn != pgn:
                if kind == _CTS:  # an EndOfMsgAck after the last packet is the normal end
                    self.stray += 1
                return
            t.frames += 1
            if kind == _EOMA:  # acknowledged before we saw every packet: we missed some
                self._drop(key, OUT_OF_SEQUENCE)
                return
            if ts > t.deadline:
                self._drop(key, TIMEOUT)
                return
            count, nxt = d[1], d[2]
            if count == 0:  # hold the connection open
                t.deadline = ts + self.timeouts.t4
                return
            # A CTS may ask again for packets already sent (a retry), never skip ahead.
            if not 1 <= nxt <= min(t.next_seq, t.packets):
                self._drop(key, OUT_OF_SEQUENCE)
                return
            del t.data[(nxt - 1) * 7:]
            t.next_seq = nxt
            t.window_end = min(t.packets, nxt + count - 1)
            t.deadline = ts + self.timeouts.t2
            return
        if kind == _ABORT:  # from either end of an RTS/CTS connection
            for key in ((channel, sa, da), (channel, da, sa)):
                t = self.open.get(key)
                if t is not None and not t.bam and t.pgn == pgn:
                    self._drop(key, ABORTED)
                    return
        self.stray += 1

    def _data(self, ts: float, channel: Hashable, sa: int, da: int,
              d: bytes) -> Reassembled | None:
        key = (channel, sa, da)
        t = self.open.get(key)
        if t is None or not d:
            self.stray += 1
            return None
        t.frames += 1
        if ts > t.deadline:
            self._drop(key, TIMEOUT)
            return None
        # Without a CTS in the log (a listener may miss one) packets in order are still whole.
        if d[0] != t.next_seq or (not t.bam and t.window_end and d[0] > t.window_end):
            self._drop(key, OUT_OF_SEQUENCE)
            return None
        remaining = t.size - len(t.data)
        if len(d) < 8 and len(d) - 1 < remaining:  # a short packet mid-message: misaligned
            self._drop(key, INVALID)
            return None
        t.data += d[1:8]
        if t.next_seq == t.packets:
            del self.open[key]
            self.completed += 1
            pgn = t.pgn
            if (pgn >> 8) & 0xFF < 0xF0:  # PDU1: the destination goes in the PS byte
                pgn = (pgn & 0x3FF00) | da
            arb = (t.priority << 26) | (pgn << 8) | sa
            return Reassembled(ts, channel, arb, True, bytes(t.data[: t.size]), t.frames)
        t.next_seq += 1
        if t.bam or t.next_seq <= t.window_end or not t.window_end:
            t.deadline = ts + self.timeouts.t1
        else:  # the window is done: the receiver's next CTS (or EndOfMsgAck) is due
            t.deadline = ts + self.timeouts.t3
        return None


# ------------------------------------------------------------------ ISO 15765-2

SINGLE_FRAME, FIRST_FRAME, CONSECUTIVE_FRAME, FLOW_CONTROL = 0, 1, 2, 3
ISOTP_MAX_CLASSIC = 4095
# N_Cr: a receiver waits at most 1000 ms for the next consecutive frame (N_Bs likewise for the
# sender waiting on flow control after the first frame).
ISOTP_TIMEOUT = 1.0


def isotp_frame_type(data: bytes) -> int | None:
    """The ISO-TP frame type of a payload (0 single, 1 first, 2 consecutive, 3 flow control),
    or None for a frame that is no ISO-TP frame (empty, or a reserved type)."""
    if not data:
        return None
    kind = data[0] >> 4
    return kind if kind <= FLOW_CONTROL else None


@dataclass(slots=True)
class _IsoTpTransfer:
    length: int
    deadline: float
    data: bytearray
    next_sn: int = 1
    frames: int = 1


class IsoTpTransport:
    """ISO 15765-2 reassembly, one transfer per (channel, id); the caller picks the ids."""

    def __init__(self, timeout: float = ISOTP_TIMEOUT) -> None:
        self.timeout = timeout
        self.open: dict[tuple[Hashable, int, bool], _IsoTpTransfer] = {}
        self.dropped: Counter[str] = Counter()
        self.stray = 0
        self.completed = 0  # multi-frame messages; single frames are messages already

    def feed(self, ts: float, channel: Hashable, arbitration_id: int, is_extended_id: bool,
             data: bytes) -> Reassembled | None:
        """One frame (see `isotp_frame_type`); the message it completes or is."""
        key = (channel, arbitration_id, is_extended_id)
        kind = isotp_frame_type(data)
        if kind == SINGLE_FRAME:
            payload = _single_frame(data)
            self._end(key, ts)  # a single frame ends the transfer in progress
            if payload is None:
                self.dropped[INVALID] += 1
                return None
            return Reassembled(ts, channel, arbitration_id, is_extended_id, payload, 1)
        if kind == FIRST_FRAME:
            self._end(key, ts)  # a new first frame mid-transfer restarts it
            start = _first_frame(data)
            if start is None:
                self.dropped[INVALID] += 1
                return None
            length, head = start
            self.open[key] = _IsoTpTransfer(length, ts + self.timeout, bytearray(head))
            return None
        if kind == CONSECUTIVE_FRAME:
            t = self.open.get(key)
            if t is None:
                self.stray += 1
                return None
            t.frames += 1
            if ts > t.deadline:
                del self.open[key]
                self.dropped[TIMEOUT] += 1
                return None
            if data[0] & 0x0F != t.next_sn:
                del self.open[key]
                self.dropped[OUT_OF_SEQUENCE] += 1
                return None
            t.data += data[1:]
            if len(t.data) >= t.length:
                del self.open[key]
                self.completed += 1
                return Reassembled(ts, channel, arbitration_id, is_extended_id,
                                   bytes(t.data[: t.length]), t.frames)
            t.next_sn = (t.next_sn + 1) & 0x0F
            t.deadline = ts + self.timeout
            return None
        # Flow control travels the other way (tester to ECU); on a reply id it belongs to no
        # reply, and anything else is not ISO-TP at all.
        self.stray += 1
        return None

    def _end(self, key: tuple[Hashable, int, bool], ts: float) -> None:
        t = self.open.pop(key, None)
        if t is not None:  # given up on already, or cut short now
            self.dropped[TIMEOUT if ts > t.deadline else INTERRUPTED] += 1

    def close(self, ts: float) -> None:
        for t in self.open.values():
            self.dropped[TIMEOUT if ts > t.deadline else INCOMPLETE] += 1
        self.open.clear()


def _single_frame(d: bytes) -> bytes | None:
    length = d[0] & 0x0F
    if length == 0 and len(d) > 8:  # CAN FD: the length in the next byte
        length = d[1]
        return d[2 : 2 + length] if 7 < length <= len(d) - 2 else None
    return d[1 : 1 + length] if 1 <= length <= len(d) - 1 else None


def _first_frame(d: bytes) -> tuple[int, bytes] | None:
    if len(d) < 8:
        return None
    length = ((d[0] & 0x0F) << 8) | d[1]
    if length == 0:  # escape: a 32-bit length, for more than 4095 bytes
        if len(d) < 7:
            return None
        length = int.from_bytes(d[2:6], "big")
        return (length, d[6:]) if length > ISOTP_MAX_CLASSIC else None
    # A first frame announces more than a single frame of its size could carry (7 bytes in
    # a classic frame; with CAN FD, the frame less the two bytes of an escaped single frame).
    return (length, d[2:]) if length >= (8 if len(d) <= 8 else len(d) - 1) else None
