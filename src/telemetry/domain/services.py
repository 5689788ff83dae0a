"""The use cases: accept readings, drain batches into the lake, aggregate hours."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress
from operator import attrgetter
from typing import Any

import msgspec

from telemetry.domain import lake
from telemetry.domain.aggregation import (
    HourAggregate,
    Identity,
    RawDecoder,
    aggregate,
    aggregate_lean,
    dedupe,
)
from telemetry.domain.batching import Batch, Batcher, BatchPolicy
from telemetry.domain.errors import (
    Forbidden,
    InvalidReadings,
    NotFound,
    PoisonMessage,
    Problem,
    QueueUnavailable,
    StorageUnavailable,
)
from telemetry.domain.keys import Principal
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.packing import Part, fits_alone, pack_joined, unpack
from telemetry.domain.partials import (
    distinct_partials,
    file_line,
    ids_of,
    merge_partials,
    partial_line,
    read_partials,
)
from telemetry.domain.ports import Clock, Queue, Storage
from telemetry.domain.readings import (
    Reading,
    ReadingRules,
    Record,
    derive_reading_ids,
    encode_records,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(t: datetime) -> int:
    return (t - _EPOCH) // _MS


# ---------------------------------------------------------------- ingest


@dataclass(frozen=True, slots=True)
class Accepted:
    reading_ids: list[str]
    messages: int


class AcceptReadings:
    """Check a request's readings, then enqueue all of them durably, or none."""

    def __init__(self, queue: Queue, clock: Clock, rules: ReadingRules) -> None:
        self.queue = queue
        self.clock = clock
        self.rules = rules

    def prepare(
        self, readings: Sequence[Reading], principal: Principal | None
    ) -> tuple[list[str], list[bytes]]:
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
        # This is most of ingest's CPU per reading. Ids and lines are encoded with one
        # encoder call per request and per hour (the per-call cost dominated), records are
        # grouped by hour as they are made, epoch_ms is inlined.
        given = [r.reading_id for r in readings]
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
        too_many_hours = self.rules.hours_problem(len(by_hour))
        if too_many_hours is not None:
            raise InvalidReadings([too_many_hours])
        all_derived = len(missing) == len(readings)
        joined = {
            h: (encode_records(recs), ts, partial_line(recs, all_derived))
            for h, (recs, ts) in by_hour.items()
        }
        try:
            return ids, pack_joined(joined, epoch_ms(now), self.queue.max_message_bytes)
        except ValueError:
            # One reading alone fills more than a queue message (a raised max signals with
            # long string values on SQS's 256 KiB): the client's to fix, so 422, not 500.
            raise InvalidReadings(self._oversized(readings, ids, now)) from None

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

    def execute(self, readings: Sequence[Reading], principal: Principal | None) -> Accepted:
        ids, bodies = self.prepare(readings, principal)
        self.queue.send(bodies)  # raises QueueUnavailable
        return Accepted(ids, len(bodies))


# ---------------------------------------------------------------- drain


@dataclass(slots=True)
class FileWritten:
    key: str
    hour: datetime
    readings: int
    bytes: int
    messages: int
    received_to_stored: LatencyDistribution
    ts_to_stored: LatencyDistribution


@dataclass(frozen=True, slots=True)
class PartialsWritten:
    key: str
    files: int
    error: str | None = None  # the write failed: the files are decoded at aggregation


@dataclass(slots=True)
class PollResult:
    received: int = 0
    files: list[FileWritten] = field(default_factory=list)
    poison: list[tuple[str, str]] = field(default_factory=list)  # (message id, why)
    first_receives: int = 0  # messages received for the first time: sends, as the worker sees
    oldest_age_ms: float | None = None  # the longest a received message had waited since ingest


class DrainBatches:
    """The worker's use case: receive messages, batch them per hour, write files, delete.

    A message is deleted only after the file holding its readings is stored, so a crash at any
    point leaves it in the queue to come back (at-least-once). A message that cannot be
    unpacked is left alone: the queue dead-letters it after max receives.

    A failed write is not dropped: the batch is kept, its messages kept invisible, and written
    again on the next poll; a failed delete after a stored write is retried the same way. Until
    that retry succeeds nothing new is received, so an outage of the lake, however long, neither
    dead-letters healthy messages nor grows memory beyond what the batch policy already held.
    """

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        clock: Clock,
        policy: BatchPolicy,
        *,
        compress: bool = False,
        receive_max: int = 10,
        partials_every: float = 60.0,
        partials_max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.queue = queue
        self.storage = storage
        self.clock = clock
        self.batcher = Batcher(policy)
        self.compress = compress
        self.receive_max = receive_max
        self._unstored: list[Batch] = []  # writes that failed, oldest first
        self._undeleted: list[Batch] = []  # stored, but the delete failed
        self._unreported: list[FileWritten] = []  # stored during a call that then raised
        # `partials/` lines of stored files, by hour, written every `partials_every` seconds
        # or `partials_max_bytes` (memory): one object per hour and interval, not one per file
        # (S3 PUTs, fsyncs).
        self.partials_every = partials_every
        self.partials_max_bytes = partials_max_bytes
        self._partials: dict[int, list[bytes]] = {}
        self._partials_bytes = 0
        self._partials_since: float | None = None
        self.partials_log: list[PartialsWritten] = []  # for the caller to report and clear

    @property
    def held(self) -> list[Batch]:
        """Every batch whose messages this worker holds: unstored, undeleted or still open."""
        return [*self._undeleted, *self._unstored, *self.batcher.open_batches]

    @property
    def backlog(self) -> int:
        """Batches waiting for a write to be retried."""
        return len(self._unstored)

    def poll(self, wait_seconds: float) -> PollResult:
        """Retry what failed; then one receive, and flush whatever is full or old enough.

        Raises QueueUnavailable or StorageUnavailable while a fault lasts; nothing held is
        lost, and the files stored before the fault are reported by the next call."""
        # Before anything is taken out of the batcher, so a queue fault here loses no batch.
        self._keep_invisible(self.held)
        self._retry()
        for deadline in (self.batcher.next_deadline(), self.next_hold()):
            if deadline is not None:
                wait_seconds = max(0.0, min(wait_seconds, deadline - self.clock.monotonic()))
        messages = self.queue.receive(self.receive_max, wait_seconds)
        result = PollResult(received=len(messages))
        ready: list[Batch] = []
        redelivered: set[int] = set()
        now_ms = epoch_ms(self.clock.now()) if messages else 0
        for m in messages:
            if m.receive_count <= 1:
                result.first_receives += 1
            try:
                part = _checked(unpack(m.body, m.receipt))
            except PoisonMessage as exc:
                result.poison.append((m.message_id, str(exc)))
                continue
            age = float(now_ms - part.received_at_ms)
            if result.oldest_age_ms is None or age > result.oldest_age_ms:
                result.oldest_age_ms = age
            ready.extend(self.batcher.add(part, self.clock.monotonic()))
            if m.receive_count > 1:
                redelivered.add(part.hour)
        # A message back from a consumer that died holding it is written now, not after the
        # batch max age: workers that keep dying before their first file would otherwise walk
        # healthy messages to the dead-letter queue, one receive each.
        for hour in redelivered:
            ready.extend(self.batcher.take(hour))
        ready.extend(self.batcher.due(self.clock.monotonic()))
        self._flush(ready)
        self._store_partials()
        result.files = self._reported()
        return result

    def flush_all(self) -> list[FileWritten]:
        """Store and delete everything held (shutdown); raises while a fault lasts, keeping
        whatever it could not store for the next call."""
        self._unstored.extend(self.batcher.drain())
        self._retry()
        self._store_partials(now=True)
        return self._reported()

    def drain(self, wait_seconds: float = 0.0) -> list[FileWritten]:
        """Receive until the queue answers empty, then flush everything (`worker --once`)."""
        files: list[FileWritten] = []
        while True:
            r = self.poll(wait_seconds)
            files.extend(r.files)
            if r.received == 0:
                break
        files.extend(self.flush_all())
        return files

    def hold(self) -> None:
        """Extend the visibility of held messages that need it; for a worker backing off."""
        self._keep_invisible(self.held)

    def release(self) -> int:
        """Give back every message held but not stored (a worker giving up at shutdown), so
        the next worker receives them at once; returns how many. Best effort: if the queue
        does not answer, they come back when their visibility timeout ends."""
        batches = [*self._unstored, *self.batcher.drain()]
        self._unstored = []
        receipts = [r for b in batches for r in b.receipts]
        if receipts:
            self.queue.change_visibility(receipts, 0)
        return len(receipts)

    def next_hold(self) -> float | None:
        """When a held batch's messages next need their visibility extended (monotonic)."""
        return min((self._extend_after(b) for b in self.held), default=None)

    def _extend_after(self, batch: Batch) -> float:
        since = batch.opened_at if batch.extended_at is None else batch.extended_at
        return since + self.queue.visibility_timeout / 2

    def _keep_invisible(self, batches: Iterable[Batch]) -> None:
        """Extend the visibility of messages held longer than half the visibility timeout,
        so a batch that is still open, or slow to write, never lets them reappear to another
        worker (which would store them twice). A batch's first part is its oldest message."""
        now = self.clock.monotonic()
        timeout = self.queue.visibility_timeout
        for b in batches:
            if now >= self._extend_after(b):
                self.queue.change_visibility(b.receipts, timeout)
                b.extended_at = now

    def _retry(self) -> None:
        """Deletes that failed, then writes that failed, in that order; raises on a fault."""
        if self._undeleted:
            self.queue.delete([r for b in self._undeleted for r in b.receipts])
            self._undeleted.clear()
        if self._unstored:
            batches, self._unstored = self._unstored, []
            self._flush(batches)

    def _reported(self) -> list[FileWritten]:
        files, self._unreported = self._unreported, []
        return files

    def _flush(self, batches: Iterable[Batch]) -> None:
        """Write and delete each batch; on the first fault keep it and the rest, and raise:
        the storage is failing, and hammering it with every batch only floods its logs."""
        waiting = list(batches)
        for i, b in enumerate(waiting):
            stored = False
            try:
                # The writes before this one may have taken a while: extend what still waits.
                self._keep_invisible(waiting[i:])
                self._write(b)
                stored = True
                self.queue.delete(b.receipts)
            except (StorageUnavailable, QueueUnavailable, OSError):
                if stored:
                    self._undeleted.append(b)  # only the delete is retried
                self._unstored.extend(waiting[i + 1 :] if stored else waiting[i:])
                raise
            except Exception:
                # Not a fault of the queue or the lake but a bug: the failing batch's messages
                # come back after their timeout (and dead-letter if it repeats); the rest wait.
                self._unstored.extend(waiting[i + 1 :])
                raise

    def _store_partials(self, *, now: bool = False) -> None:
        """Write the partials kept since the last time, when `partials_every` has passed, or
        they hold `partials_max_bytes`, or `now`. Best effort: they only spare aggregation a
        decode of the files they cover, so a failed write drops them (logged by the caller)
        rather than holding up the readings."""
        since = self._partials_since
        if since is None or not (
            now
            or self.clock.monotonic() - since >= self.partials_every
            or self._partials_bytes >= self.partials_max_bytes
        ):
            return
        pending, self._partials, self._partials_since = self._partials, {}, None
        self._partials_bytes = 0
        for hour, lines in pending.items():
            data = b"".join(lines)
            digest = hashlib.blake2b(data, digest_size=10).hexdigest()
            name = f"{self.clock.now():%Y%m%dT%H%M%SZ}-{digest}"
            key = lake.partials_key(datetime.fromtimestamp(hour, UTC), name)
            try:
                self.storage.put(key, data)
            except (StorageUnavailable, OSError) as exc:
                self.partials_log.append(PartialsWritten(key, len(lines), str(exc)))
            else:
                self.partials_log.append(PartialsWritten(key, len(lines)))

    def _write(self, batch: Batch) -> None:
        """Store the batch's file and note it for the next report; the caller deletes."""
        content = b"".join(p.payload for p in batch.parts)
        hour = datetime.fromtimestamp(batch.hour, UTC)
        data = gzip.compress(content, compresslevel=6, mtime=0) if self.compress else content
        # Named once, at the first attempt: a retry after a put that failed but may have landed
        # (an S3 timeout) overwrites that file instead of storing the readings a second time.
        # Named by its messages' receipts, which every queue makes unique per receive: as
        # unique as a hash of the content, at a hundredth of the bytes (hashing 8 MiB of
        # content was 12 ms a file, 15% of the worker's time).
        if batch.name is None:
            receipts = "\n".join(batch.receipts).encode()
            digest = hashlib.blake2b(receipts, digest_size=10).hexdigest()
            batch.name = f"{self.clock.now():%Y%m%dT%H%M%SZ}-{digest}"
        key = lake.raw_key(hour, batch.name, self.compress)
        self.storage.put(key, data)
        if all(p.partial for p in batch.parts):  # else aggregation decodes this file
            if self._partials_since is None:
                self._partials_since = self.clock.monotonic()
            line = file_line(key, [p.partial for p in batch.parts])
            self._partials.setdefault(batch.hour, []).append(line)
            self._partials_bytes += len(line)
        stored_ms = epoch_ms(self.clock.now())
        received = LatencyDistribution()
        event = LatencyDistribution()
        ts: list[int] = []
        for p in batch.parts:
            received.add(stored_ms - p.received_at_ms, p.readings)
            ts.extend(p.ts_ms)
        # One add_many for the whole file: it sorts once and walks the buckets once.
        event.add_many([stored_ms - t for t in ts])
        self._unreported.append(
            FileWritten(key, hour, batch.readings, len(data), len(batch.parts), received, event)
        )


_raw_value = msgspec.json.Decoder(msgspec.Raw)


def _checked(part: Part) -> Part:
    """Refuse an envelope the lake cannot hold, so it dead-letters instead of failing its
    batch's write every time (and with it the healthy messages of the same hour)."""
    try:
        if part.hour % 3600:
            raise ValueError("not the start of an hour")
        datetime.fromtimestamp(part.hour, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise PoisonMessage(f"envelope hour {part.hour}: {exc}") from exc
    if part.partial:
        try:
            _raw_value.decode(part.partial)
        except msgspec.DecodeError:
            # The readings are sound; only the shortcut is not. Without it, the file is
            # decoded at aggregation, and the other files' partials stay readable.
            return dataclasses.replace(part, partial=b"")
    return part


# ---------------------------------------------------------------- aggregate


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


class _State(msgspec.Struct):
    version: int = _STATE_VERSION
    hours: dict[str, list[str]] = {}
    # hour -> [raw lines, distinct readings] at its last aggregation: the duplicate rate of
    # ADR 0001's triggers
    counts: dict[str, list[int]] = {}


_state_decoder = msgspec.json.Decoder(_State)
_state_encoder = msgspec.json.Encoder()
_records_decoder = msgspec.json.Decoder(Record)


def _decode_raw(decoder: RawDecoder, key: str, data: bytes) -> list[Any]:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{key}: not a raw lake file: {exc}") from exc


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
        records: list[Record] = []
        for key in keys:
            try:
                records.extend(_records_decoder.decode_lines(_raw_bytes(self.storage, key)))
            except msgspec.DecodeError as exc:
                raise ValueError(f"{key}: not a raw lake file: {exc}") from exc
        return records

    def _aggregate(
        self, hour: datetime, keys: Sequence[str], covered: Covered | None = None
    ) -> tuple[int, HourAggregate, int]:
        """The hour's aggregate, its raw line count and how many files were merged from their
        partials: from the files' partials (see `partials`), else on lean records (see
        `RawDecoder`), else on Records where lean copies of a reading cannot settle which one
        counts."""
        fast = self._from_partials(hour, keys, covered)
        if fast is not None:
            return fast
        part = HourPart(self.storage, keys)
        agg = part.aggregate(hour)
        if agg is None:
            raw = self.read_hour(keys)
            return len(raw), aggregate(hour, dedupe(raw)), 0
        return part.raw, agg, 0

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
        partials, lines = distinct
        ids = ids_of(partials)
        rest = [k for k in keys if k not in covered]
        part = HourPart(self.storage, rest) if rest else None
        if part is not None:
            ids.extend(part.ids())
            lines += part.raw
            if len(set(ids)) < len(ids):
                return None
        agg = merge_partials(hour, partials)
        if part is not None:
            lean = part.aggregate(hour, mergeable=True)
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

    def hour_from_parts(
        self, hour: datetime, keys: Sequence[str], results: Sequence[PartResult | None]
    ) -> AggregateResult:
        """Write the hour from the results of `HourPart`s over a split of `keys` (see
        `combine_parts`); the whole hour again, here, when they cannot settle it."""
        combined = combine_parts(hour, results)
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
        todo = [
            (lake.parse_hour(hour_text), keys)
            for hour_text, keys in sorted((inputs or self.raw_hours()).items())
            if sorted(state.hours.get(hour_text, [])) != sorted(keys)
        ]
        keys_of = {lake.format_hour(h): keys for h, keys in todo}
        results: list[AggregateResult] = []
        for r in (run or self._run_here)(todo):
            hour_text = lake.format_hour(r.hour)
            state.hours[hour_text] = sorted(keys_of[hour_text])
            state.counts[hour_text] = [r.raw_records, r.readings]
            results.append(r)
            # Saved after every hour: a crash costs at most one hour's work again.
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


def _raw_bytes(storage: Storage, key: str) -> bytes:
    data = storage.get(key)
    return gzip.decompress(data) if key.endswith(".gz") else data


class HourPart:
    """Some of an hour's raw files, decoded into lean records (all of them, for one pass).

    An hour split into parts is aggregated a part at a time (in parallel, by the caller):
    `ids()` of every part go to `shared_ids`, and `finish` leaves those out of the part's
    partial, handing over their copies instead, so `combine_parts` settles each such reading
    once, by the same rule as one pass. Partials merge exactly (see `aggregation`), so the
    result is the one-pass aggregate whatever the split.
    """

    def __init__(self, storage: Storage, keys: Sequence[str]) -> None:
        self._decode(storage, keys)

    def _decode(self, storage: Storage, keys: Sequence[str]) -> None:
        decoder = RawDecoder()
        blobs: list[tuple[str, bytes]] = []
        lean: list[Any] = []
        for key in keys:
            data = _raw_bytes(storage, key)
            blobs.append((key, data))
            lean.extend(_decode_raw(decoder, key, data))
        if decoder.generation > 1:  # a later file brought new signal names: one Struct for all
            lean = [r for key, data in blobs for r in _decode_raw(decoder, key, data)]
        self.records = lean
        self.names = decoder.names
        self.raw = len(lean)

    def aggregate(
        self, hour: datetime, skip: Collection[Identity] = (), *, mergeable: bool = False
    ) -> HourAggregate | None:
        return aggregate_lean(hour, self.records, self.names, skip, mergeable=mergeable)

    def ids(self) -> list[Identity]:
        """The identities, `(vehicle_id, reading_id)`, of this part's records."""
        return list(zip(map(_by_vehicle_id, self.records), map(_by_reading_id, self.records),
                        strict=True))

    def finish(self, hour: datetime, shared: Collection[Identity]) -> PartResult | None:
        """The partial without the `shared` identities, ready to send; None when this part alone
        cannot settle one of its own readings (the caller then aggregates the whole hour)."""
        agg = self.aggregate(hour, shared, mergeable=True)
        if agg is None:
            return None
        mine = compress(self.records, map(shared.__contains__, self.ids()))
        copies = b"".join(_lean_encoder.encode(r) + b"\n" for r in mine)
        return PartResult(self.raw, agg, copies)


@dataclass(frozen=True, slots=True)
class PartResult:
    raw: int
    aggregate: HourAggregate
    copies: bytes  # lean lines of the shared identities found in this part


_by_reading_id = attrgetter("reading_id")
_by_vehicle_id = attrgetter("vehicle_id")
_lean_encoder = msgspec.json.Encoder()


def shared_ids(parts: Iterable[Iterable[Identity]]) -> set[Identity]:
    """The reading identities found in more than one part."""
    seen: set[Identity] = set()
    shared: set[Identity] = set()
    for ids in parts:
        mine = set(ids)
        shared |= seen & mine
        seen |= mine
    return shared


def combine_parts(
    hour: datetime, results: Sequence[PartResult | None]
) -> tuple[int, HourAggregate] | None:
    """Raw line count and aggregate of the hour from its parts' results; None when they
    cannot settle it (a part could not, or copies of a shared reading tie)."""
    done = [r for r in results if r is not None]
    if len(done) < len(results):
        return None
    decoder = RawDecoder()
    copies = b"".join(r.copies for r in done)
    merged = aggregate_lean(hour, decoder.decode(copies) if copies else [], decoder.names,
                            mergeable=True)
    if merged is None:
        return None
    for r in done:
        merged = merged.merge(r.aggregate)
    return sum(r.raw for r in done), merged
