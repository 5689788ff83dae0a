"""The worker's use case: drain the queue's batches into the lake's raw files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from telemetry.domain import lake
from telemetry.domain.batching import Batch, Batcher, BatchPolicy
from telemetry.domain.errors import PoisonMessage, QueueUnavailable, StorageUnavailable
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.packing import Envelope, unpack
from telemetry.domain.partials import file_line
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.consuming import MessageConsumer
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import epoch_ms


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
        queue: MessageConsumer,
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
                envelope = _checked(unpack(m.body, m.receipt))
            except PoisonMessage as exc:
                result.poison.append((m.message_id, str(exc)))
                continue
            age = float(now_ms - envelope.received_at_ms)
            if result.oldest_age_ms is None or age > result.oldest_age_ms:
                result.oldest_age_ms = age
            ready.extend(self.batcher.add(envelope, self.clock.monotonic()))
            if m.receive_count > 1:
                redelivered.add(envelope.hour)
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
        self._unstored.extend(self.batcher.take_all())
        self._retry()
        self._store_partials(now=True)
        return self._reported()

    def until_empty(self, wait_seconds: float = 0.0) -> list[FileWritten]:
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
        batches = [*self._unstored, *self.batcher.take_all()]
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
        worker (which would store them twice). A batch's first envelope is its oldest message."""
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
        content = b"".join(p.payload for p in batch.envelopes)
        hour = datetime.fromtimestamp(batch.hour, UTC)
        data = gzip.compress(content, compresslevel=6, mtime=0) if self.compress else content
        # Named once, at the first attempt: a retry after a put that failed but may have landed
        # (an S3 timeout) overwrites that file instead of storing the readings a second time.
        # Named by its messages' receipts, which every queue makes unique per receive: as
        # unique as a hash of the content, and far fewer bytes to hash (docs/benchmarks.md).
        if batch.name is None:
            receipts = "\n".join(batch.receipts).encode()
            digest = hashlib.blake2b(receipts, digest_size=10).hexdigest()
            batch.name = f"{self.clock.now():%Y%m%dT%H%M%SZ}-{digest}"
        key = lake.raw_key(hour, batch.name, self.compress)
        self.storage.put(key, data)
        if all(p.partial for p in batch.envelopes):  # else aggregation decodes this file
            if self._partials_since is None:
                self._partials_since = self.clock.monotonic()
            line = file_line(key, [p.partial for p in batch.envelopes])
            self._partials.setdefault(batch.hour, []).append(line)
            self._partials_bytes += len(line)
        stored_ms = epoch_ms(self.clock.now())
        received = LatencyDistribution()
        event = LatencyDistribution()
        ts: list[int] = []
        for p in batch.envelopes:
            received.add(stored_ms - p.received_at_ms, p.readings)
            ts.extend(p.ts_ms)
        # One add_many for the whole file: it sorts once and walks the buckets once.
        event.add_many([stored_ms - t for t in ts])
        self._unreported.append(
            FileWritten(key, hour, batch.readings, len(data), len(batch.envelopes), received, event)
        )


_raw_value = msgspec.json.Decoder(msgspec.Raw)


def _checked(envelope: Envelope) -> Envelope:
    """Refuse an envelope the lake cannot hold, so it dead-letters instead of failing its
    batch's write every time (and with it the healthy messages of the same hour)."""
    try:
        if envelope.hour % 3600:
            raise ValueError("not the start of an hour")
        datetime.fromtimestamp(envelope.hour, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise PoisonMessage(f"envelope hour {envelope.hour}: {exc}") from exc
    if envelope.partial:
        try:
            _raw_value.decode(envelope.partial)
        except msgspec.DecodeError:
            # The readings are sound; only the shortcut is not. Without it, the file is
            # decoded at aggregation, and the other files' partials stay readable.
            return dataclasses.replace(envelope, partial=b"")
    return envelope
