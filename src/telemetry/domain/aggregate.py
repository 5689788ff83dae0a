"""Aggregation's use case: rewrite each changed hour's aggregate from its raw files."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from telemetry.domain import lake
from telemetry.domain.aggregation import HourAggregate, aggregate, aggregate_raw, dedupe
from telemetry.domain.errors import NotFound, StorageUnavailable
from telemetry.domain.hour_slices import (
    HourSlice,
    SliceResult,
    combine_slices,
    lend_raw,
    read_records,
)
from telemetry.domain.partials import distinct_partials, merge_partials, read_partials
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import Record


@dataclass(frozen=True, slots=True)
class AggregateResult:
    hour: datetime
    key: str
    files: int
    raw_records: int
    readings: int
    vehicles: int
    from_partials: int = 0  # files merged from their partials rather than decoded


# 2: a reading's identity became (vehicle_id, reading_id) (ADR 0010). A state of an older
# version says nothing about what its aggregates would be now, so every hour is redone once.
_STATE_VERSION = 2
# Saves of the state in a run over every hour of the lake, at most (see `changed`).
SAVES_PER_RUN = 256


class _State(msgspec.Struct):
    version: int = _STATE_VERSION
    hours: dict[str, list[str]] = {}
    # hour -> [raw lines, distinct readings] at its last aggregation: the duplicate rate of
    # ADR 0001's triggers
    counts: dict[str, list[int]] = {}


_state_decoder = msgspec.json.Decoder(_State)
_state_encoder = msgspec.json.Encoder()


Covered = dict[str, list[msgspec.Raw]]
"""Raw key -> the partials of its envelopes (see `AggregateHours.partials`)."""
Todo = Sequence[tuple[datetime, list[str]]]
"""Hours to aggregate, each with its raw file keys."""
HourRunner = Callable[[Todo], Iterable[AggregateResult]]
"""Aggregates and writes the hours of a todo, yielding each result as it is done (any order)."""


class AggregateHours:
    """Rewrite an hour's aggregate from all of its raw files; find the hours that changed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def read_hour(self, keys: Sequence[str]) -> list[Record]:
        return [r for key in keys for r in read_records(self.storage, key)]

    def _aggregate(
        self, hour: datetime, keys: Sequence[str], covered: Covered | None = None
    ) -> tuple[int, HourAggregate, int]:
        """The hour's aggregate, its raw line count and how many files were merged from their
        partials: from the files' partials (see `partials`), else by the compiled kernel (see
        `aggregate_raw`), else on lean records (see `RawDecoder`), else on Records where lean
        copies of a reading cannot settle which one counts."""
        fast = self._from_partials(hour, keys, covered)
        if fast is not None:
            return fast
        contents = self.contents(keys)
        native = aggregate_raw(hour, contents)
        if native is not None:
            return native[0], native[1], 0
        hour_slice = HourSlice(self.storage, keys, [bytes(c) for c in contents])
        agg = hour_slice.aggregate(hour)
        if agg is None:
            raw = self.read_hour(keys)
            return len(raw), aggregate(hour, dedupe(raw)), 0
        return hour_slice.raw, agg, 0

    def contents(self, keys: Sequence[str]) -> list[bytes | memoryview]:
        """The raw files' lines (gzip files decompressed), for the compiled kernel: lent by
        the storage where it can (a file mapped into memory is not copied)."""
        return [lend_raw(self.storage, k) for k in keys]

    def partials(self, hour: datetime, keys: Sequence[str]) -> Covered:
        """Raw key -> its envelopes' partials, for the raw files of `keys` that have them. An
        object under `partials/` that cannot be read (corrupt, gone, or refused: a role
        without the grant) is passed over: its files are decoded."""
        wanted = set(keys)
        found: dict[str, list[msgspec.Raw]] = {}
        for key in self.storage.list(lake.partials_prefix(hour)):
            try:
                covered = read_partials(self.storage.get(key), wanted)
            except (msgspec.DecodeError, NotFound, StorageUnavailable):
                continue
            for raw_key, envelopes in covered.items():
                found.setdefault(raw_key, envelopes)
        return found

    def _from_partials(
        self, hour: datetime, keys: Sequence[str], covered: Covered | None
    ) -> tuple[int, HourAggregate, int] | None:
        """The partials of the files that have them, merged with the decoded rest; None when
        no file has them or a reading identity occurs twice in a way partials cannot settle."""
        if covered is None:
            covered = self.partials(hour, keys)
        if not covered:
            return None
        try:
            distinct = distinct_partials(e for envelopes in covered.values() for e in envelopes)
        except msgspec.DecodeError:
            return None
        if distinct is None:
            return None
        lines = distinct.lines
        rest = [k for k in keys if k not in covered]
        hour_slice = HourSlice(self.storage, rest) if rest else None
        if hour_slice is not None:
            lines += hour_slice.raw
            if not distinct.add(hour_slice.ids()):
                return None
        agg = merge_partials(hour, distinct.partials)
        if hour_slice is not None:
            lean = hour_slice.aggregate(hour, mergeable=True)
            if lean is None:
                return None
            agg = agg.merge(lean)
        return lines, agg, len(covered)

    def hour(
        self, hour: datetime, keys: Sequence[str] | None = None, covered: Covered | None = None
    ) -> AggregateResult:
        """Aggregate and write `hour`; `covered`: what `partials(hour, keys)` returned, when the
        caller has read it already."""
        if keys is None:
            keys = self.hour_keys(hour)
        raw, agg, from_partials = self._aggregate(hour, keys, covered)
        return self.write(hour, len(keys), raw, agg, from_partials)

    def hour_keys(self, hour: datetime) -> list[str]:
        return [k for k in self.storage.list(lake.raw_prefix(hour)) if lake.is_raw_file(k)]

    def write(
        self, hour: datetime, files: int, raw: int, agg: HourAggregate, from_partials: int = 0
    ) -> AggregateResult:
        key = lake.aggregate_key(hour)
        self.storage.put(key, agg.encode())
        return AggregateResult(
            hour, key, files, raw, agg.readings, len(agg.vehicles), from_partials
        )

    def slice(self, keys: Sequence[str]) -> HourSlice:
        """Some of an hour's raw files, decoded, for a caller that splits the hour (see
        `hour_from_slices`)."""
        return HourSlice(self.storage, keys)

    def hour_from_slices(
        self, hour: datetime, keys: Sequence[str], results: Sequence[SliceResult | None]
    ) -> AggregateResult:
        """Write the hour from the results of `HourSlice`s over a split of `keys` (see
        `combine_slices`); the whole hour again, here, when they cannot settle it."""
        combined = combine_slices(hour, results)
        if combined is None:
            return self.hour(hour, keys)
        return self.write(hour, len(keys), *combined)

    def raw_hours(self) -> dict[str, list[str]]:
        hours: dict[str, list[str]] = {}
        for key in self.storage.list(lake.RAW):
            h = lake.hour_of_key(key)
            if h is not None and lake.is_raw_file(key):
                hours.setdefault(lake.format_hour(h), []).append(key)
        return hours

    def changed(
        self, run: HourRunner | None = None, inputs: dict[str, list[str]] | None = None
    ) -> list[AggregateResult]:
        """Aggregate every hour whose raw files differ from the last run's (all, the first
        time), one after the other here, or by `run` (which may use other processes).
        `inputs`: the files of each hour, when not `raw_hours()` (see `CurateHours`)."""
        state = self._state()
        # An empty `inputs` means every hour was held back (CurateHours), not "all of them".
        files = inputs if inputs is not None else self.raw_hours()
        todo = [
            (lake.parse_hour(hour_text), keys)
            for hour_text, keys in sorted(files.items())
            if sorted(state.hours.get(hour_text, [])) != sorted(keys)
        ]
        keys_of = {lake.format_hour(h): keys for h, keys in todo}
        results: list[AggregateResult] = []
        # The state lists every hour's files, so one save costs in proportion to the lake:
        # saved after every hour, a run over all of a long lake's hours (its first, or after
        # a version change) would write it quadratically. Saved after every `every` hours and
        # at the end instead, a crash costs at most `every` hours' work again (one, while the
        # lake holds fewer than 2 x SAVES_PER_RUN hours).
        every = max(1, len(files) // SAVES_PER_RUN)
        unsaved = 0
        try:
            for r in (run or self._run_here)(todo):
                hour_text = lake.format_hour(r.hour)
                state.hours[hour_text] = sorted(keys_of[hour_text])
                state.counts[hour_text] = [r.raw_records, r.readings]
                results.append(r)
                unsaved += 1
                if unsaved >= every:
                    self.storage.put(lake.AGGREGATE_STATE, _state_encoder.encode(state))
                    unsaved = 0
        finally:
            if unsaved:  # also when an hour failed: the hours done before it are recorded
                self.storage.put(lake.AGGREGATE_STATE, _state_encoder.encode(state))
        return sorted(results, key=lambda r: r.hour)

    def _state(self) -> _State:
        try:
            state = _state_decoder.decode(self.storage.get(lake.AGGREGATE_STATE))
        except NotFound:
            return _State()
        # An older version says nothing about what its hours would be now: every hour is
        # aggregated again, once (see _STATE_VERSION).
        return state if state.version >= _STATE_VERSION else _State()

    def counts(self) -> dict[datetime, tuple[int, int]]:
        """Hour -> (raw lines, distinct readings) as of each hour's last aggregation (hours
        aggregated before these were recorded are missing)."""
        return {lake.parse_hour(h): (c[0], c[1]) for h, c in self._state().counts.items()
                if len(c) == 2}

    def _run_here(self, todo: Todo) -> Iterator[AggregateResult]:
        return (self.hour(h, keys) for h, keys in todo)
