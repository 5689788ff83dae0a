"""What a worker saw lately, in time slots, published to the lake for `telemetry triggers`.

Each worker process keeps a rolling window of slots (sends it received, readings it stored, the
longest a message had waited, both latency distributions) and writes it whole, now and then, to
`_state/workers/<worker>.json`. Any machine that reads the lake can then merge the workers'
windows: the trigger of ADR 0001 on received -> stored and the send rate need no CloudWatch and
no scrape of every worker. Slots are on the wall clock (epoch seconds), so the windows of
workers on different hosts line up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from telemetry.domain.latency import LatencyDistribution

STATE_PREFIX = "_state/workers/"


def state_key(worker: str) -> str:
    return f"{STATE_PREFIX}{worker}.json"


class _Dist(msgspec.Struct, array_like=True):
    counts: dict[int, int]
    count: int
    max_ms: float
    negative: int
    total_ms: float

    @staticmethod
    def of(d: LatencyDistribution) -> _Dist:
        return _Dist(d.counts, d.count, d.max_ms, d.negative, d.total_ms)

    def value(self) -> LatencyDistribution:
        return LatencyDistribution(dict(self.counts), self.count, self.max_ms, self.negative,
                                   self.total_ms)


class _Slot(msgspec.Struct):
    sends: int = 0  # messages received for the first time
    messages: int = 0  # every receive, redeliveries included
    readings: int = 0
    files: int = 0
    bytes: int = 0
    oldest_age_ms: float = 0.0
    received_to_stored: _Dist | None = None
    ts_to_stored: _Dist | None = None


class _Wire(msgspec.Struct):
    worker: str
    updated_at: float  # epoch seconds
    slot_seconds: float
    slots: dict[int, _Slot]  # slot start, epoch seconds


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Wire)


@dataclass(slots=True)
class Slot:
    sends: int = 0
    messages: int = 0
    readings: int = 0
    files: int = 0
    bytes: int = 0
    oldest_age_ms: float = 0.0
    received_to_stored: LatencyDistribution = field(default_factory=LatencyDistribution)
    ts_to_stored: LatencyDistribution = field(default_factory=LatencyDistribution)

    def merge(self, other: Slot) -> None:
        self.sends += other.sends
        self.messages += other.messages
        self.readings += other.readings
        self.files += other.files
        self.bytes += other.bytes
        self.oldest_age_ms = max(self.oldest_age_ms, other.oldest_age_ms)
        self.received_to_stored = self.received_to_stored.merge(other.received_to_stored)
        self.ts_to_stored = self.ts_to_stored.merge(other.ts_to_stored)


class WorkerState:
    """One worker's slots over the last `keep_seconds`."""

    def __init__(self, worker: str, slot_seconds: float, keep_seconds: float) -> None:
        if slot_seconds <= 0 or keep_seconds < slot_seconds:
            raise ValueError("slot_seconds must be > 0 and keep_seconds at least one slot")
        self.worker = worker
        self.slot_seconds = slot_seconds
        self.keep_seconds = keep_seconds
        self.updated_at = 0.0
        self.slots: dict[int, Slot] = {}

    def _slot(self, now: float) -> Slot:
        start = int(now // self.slot_seconds * self.slot_seconds)
        slot = self.slots.get(start)
        if slot is None:
            slot = self.slots[start] = Slot()
        return slot

    def received(self, now: float, messages: int, sends: int, oldest_age_ms: float | None
                 ) -> None:
        if not messages:
            return
        s = self._slot(now)
        s.messages += messages
        s.sends += sends
        if oldest_age_ms is not None:
            s.oldest_age_ms = max(s.oldest_age_ms, oldest_age_ms)

    def stored(self, now: float, readings: int, nbytes: int,
               received_to_stored: LatencyDistribution, ts_to_stored: LatencyDistribution
               ) -> None:
        s = self._slot(now)
        s.files += 1
        s.readings += readings
        s.bytes += nbytes
        s.received_to_stored = s.received_to_stored.merge(received_to_stored)
        s.ts_to_stored = s.ts_to_stored.merge(ts_to_stored)

    def encode(self, now: float) -> bytes:
        """The state as published; slots older than `keep_seconds` are dropped first."""
        horizon = now - self.keep_seconds
        self.slots = {t: s for t, s in self.slots.items() if t + self.slot_seconds > horizon}
        self.updated_at = now
        wire = _Wire(self.worker, now, self.slot_seconds, {
            t: _Slot(s.sends, s.messages, s.readings, s.files, s.bytes, s.oldest_age_ms,
                     _Dist.of(s.received_to_stored), _Dist.of(s.ts_to_stored))
            for t, s in sorted(self.slots.items())
        })
        return _encoder.encode(wire)

    @classmethod
    def decode(cls, data: bytes) -> WorkerState:
        """Raises ValueError for what is not a published worker state."""
        try:
            w = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a worker state: {exc}") from exc
        state = cls(w.worker, w.slot_seconds, max(w.slot_seconds, 1.0))
        state.updated_at = w.updated_at
        for t, s in w.slots.items():
            slot = Slot(s.sends, s.messages, s.readings, s.files, s.bytes, s.oldest_age_ms)
            if s.received_to_stored is not None:
                slot.received_to_stored = s.received_to_stored.value()
            if s.ts_to_stored is not None:
                slot.ts_to_stored = s.ts_to_stored.value()
            state.slots[t] = slot
        return state


@dataclass(frozen=True, slots=True)
class Window:
    """Every worker's slots that fall in [start, end), merged."""

    start: float
    end: float
    workers: int  # workers that published within the window
    last_update: float | None  # the most recent publication of any worker, epoch seconds
    totals: Slot
    latest_receive: float | None  # start of the latest slot with a receive, epoch seconds
    latest_oldest_age_ms: float | None  # the oldest age seen in that slot

    @property
    def seconds(self) -> float:
        return self.end - self.start


def window(states: Iterable[WorkerState], now: float, seconds: float) -> Window:
    start = now - seconds
    totals = Slot()
    workers = 0
    last_update: float | None = None
    receives: dict[int, float] = {}  # slot start -> oldest age seen by any worker
    for st in states:
        if last_update is None or st.updated_at > last_update:
            last_update = st.updated_at
        if st.updated_at < start:
            continue
        workers += 1
        for t, slot in st.slots.items():
            if t + st.slot_seconds <= start or t > now:
                continue
            totals.merge(slot)
            if slot.messages:
                receives[t] = max(receives.get(t, 0.0), slot.oldest_age_ms)
    latest = max(receives, default=None)
    return Window(start, now, workers, last_update, totals,
                  None if latest is None else float(latest),
                  None if latest is None else receives[latest])


def worker_name(host: str, pid: int, token: str) -> str:
    """Unique per worker: a host runs many processes, a process (the demo) several workers."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in host) or "host"
    return f"{safe}-{pid}-{token}"


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
