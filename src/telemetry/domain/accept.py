"""Ingest's use case: accept a request's readings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from telemetry.domain.api_keys import Principal
from telemetry.domain.errors import Forbidden, InvalidReadings, Problem
from telemetry.domain.packing import fits_alone, pack_joined
from telemetry.domain.partials import partial_line, worth_a_partial
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.sending import MessageSender
from telemetry.domain.readings import (
    _EPOCH,
    _MS,
    Reading,
    ReadingRules,
    Record,
    derive_reading_ids,
    encode_records,
    epoch_ms,
    ids_and_lines,
)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a request's readings became: their ids, and the queue messages that carry them."""

    reading_ids: list[str]
    messages: list[bytes]


class AcceptReadings:
    """Ingest's use case: check a request's readings and pack them into queue messages.

    It sends nothing: the HTTP entrypoint sends the messages off the event loop, with a
    timeout, and answers 202 only once all of them are enqueued."""

    def __init__(self, queue: MessageSender, clock: Clock, rules: ReadingRules) -> None:
        self.queue = queue
        self.clock = clock
        self.rules = rules

    def execute(self, readings: Sequence[Reading], principal: Principal | None) -> Accepted:
        """Validate and pack; pure CPU work. Raises InvalidReadings or Forbidden."""
        now = self.clock.now()
        problems = self.rules.check(readings, now)
        if problems:
            raise InvalidReadings(problems)
        if principal is not None:
            vehicles = {r.vehicle_id for r in readings}  # a batch repeats its vehicles
            denied = sorted(v for v in vehicles if not principal.allows(v))
            if denied:
                raise Forbidden(denied)
        given = [r.reading_id for r in readings]
        all_derived = given.count(None) == len(given)
        native = ids_and_lines(readings, now)
        if native is None:
            ids, joined = self._python_path(readings, given, now, all_derived)
        else:
            ids, hours = native
            self._check_hours(len(hours))
            joined = {h: (lines, ts, self._partial(readings, ids, idx, now, all_derived))
                      for h, (lines, ts, idx) in hours.items()}
        try:
            return Accepted(ids, pack_joined(joined, epoch_ms(now), self.queue.max_message_bytes))
        except ValueError:
            # One reading alone fills more than a queue message (a raised max signals with
            # long string values on SQS's 256 KiB): the client's to fix, so 422, not 500.
            raise InvalidReadings(self._oversized(readings, ids, now)) from None

    def _python_path(
        self, readings: Sequence[Reading], given: list[str | None], now: datetime,
        all_derived: bool,
    ) -> tuple[list[str], dict[int, tuple[bytes, list[int], bytes | None]]]:
        """`ids_and_lines` in Python, with the partials: what runs without the kernel."""
        # This is most of ingest's CPU per reading without the kernel. Ids and lines are
        # encoded with one encoder call per request and per hour (the per-call cost
        # dominated), records are grouped by hour as they are made, epoch_ms is inlined.
        missing = [r for r in readings if r.reading_id is None] if None in given else []
        derived = iter(derive_reading_ids(missing))
        ids = [rid or next(derived) for rid in given]
        by_hour: dict[int, tuple[list[Record], list[int]]] = {}
        for r, rid in zip(readings, ids, strict=True):
            ts = r.ts if r.ts.tzinfo is UTC else r.ts.astimezone(UTC)
            t_ms = (ts - _EPOCH) // _MS
            hour = t_ms // 3_600_000 * 3600
            group = by_hour.get(hour)
            if group is None:
                group = by_hour[hour] = ([], [])
            group[0].append(Record(rid, r.vehicle_id, ts, now, r.signals))
            group[1].append(t_ms)
        self._check_hours(len(by_hour))
        return ids, {h: (encode_records(recs), ts, partial_line(recs, all_derived))
                     for h, (recs, ts) in by_hour.items()}

    def _check_hours(self, hours: int) -> None:
        too_many_hours = self.rules.hours_problem(hours)
        if too_many_hours is not None:
            raise InvalidReadings([too_many_hours])

    @staticmethod
    def _partial(
        readings: Sequence[Reading], ids: list[str], indexes: list[int], now: datetime,
        all_derived: bool,
    ) -> bytes | None:
        """An hour's partial line (`partial_line`), its records made only when it gets one."""
        if not worth_a_partial(len(indexes), len({readings[i].vehicle_id for i in indexes})):
            return None
        records = []
        for i in indexes:
            r = readings[i]
            ts = r.ts if r.ts.tzinfo is UTC else r.ts.astimezone(UTC)
            records.append(Record(ids[i], r.vehicle_id, ts, now, r.signals))
        return partial_line(records, all_derived)

    def _oversized(
        self, readings: Sequence[Reading], ids: list[str], now: datetime
    ) -> list[Problem]:
        limit = self.queue.max_message_bytes
        problems: list[Problem] = []
        for i, (r, rid) in enumerate(zip(readings, ids, strict=True)):
            ts = r.ts.astimezone(UTC)
            size = len(encode_records([Record(rid, r.vehicle_id, ts, now, r.signals)]))
            if not fits_alone(size, limit):
                problems.append(Problem(i, "signals", f"the reading takes {size} bytes "
                                        f"encoded; a queue message holds at most {limit}"))
        return problems
