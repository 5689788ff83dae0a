"""The curated lake: each closed hour's distinct readings, sorted, in files of a bounded size.

An hour is curated once it has closed (its end plus a grace period has passed) and again
whenever a raw file it was not built from appears (late data). Its readings are those of its
raw files, one copy per identity `(vehicle_id, reading_id)` (the copy the aggregation keeps:
received first, ties to the smaller encoding), sorted by vehicle, then time, then id.

How an hour is replaced (see docs/adr/0007-curated-hours.md): the new parts are written under
names derived from their content (`part-00000-<digest>.<ext>`, so a re-run of the same hour
overwrites instead of adding), then the hour's `_manifest.json` (one atomic put: it names the
current parts), then every other object of the hour's prefix is deleted. A reader of the
manifest sees the old hour or the new one, never a mix; a crash at any step leaves the manifest
naming a whole set, and the next pass finishes the job, because the state that says the hour
is done is saved last.

Raw retention: once an hour is curated and older than the retention, its raw files may go. The
state keeps every raw key an hour was built from, so a key that is gone (retired here, or
expired by an S3 lifecycle rule) is known to live on in the curated copy, which is then read
back as an input when late data arrives. Only a lossless format can stand in for raw files.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Protocol

import msgspec

from telemetry.domain import lake
from telemetry.domain.aggregation import dedupe
from telemetry.domain.errors import NotFound
from telemetry.domain.hour_slices import read_records
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import Record, encode_records

MANIFEST = "_manifest.json"
STATE = "aggregates/_state/curated.json"
HOUR = timedelta(hours=1)


class CuratedFormat(Protocol):
    """How curated parts are encoded: gzip JSON Lines here, Parquet in an adapter."""

    @property
    def extension(self) -> str: ...

    @property
    def lossless(self) -> bool:
        """`decode(encode(records)) == records`, encodings included: it may replace raw files."""
        ...

    def encode(self, records: Sequence[Record]) -> bytes: ...

    def decode(self, data: bytes) -> list[Record]: ...


_record_lines = msgspec.json.Decoder(Record)


class JsonLinesGzip:
    """The raw files' own line format, gzip-compressed: lossless, and readable as raw."""

    extension = "jsonl.gz"
    lossless = True

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, records: Sequence[Record]) -> bytes:
        return gzip.compress(encode_records(records), compresslevel=self.level, mtime=0)

    def decode(self, data: bytes) -> list[Record]:
        return _record_lines.decode_lines(gzip.decompress(data))


_JSONL = JsonLinesGzip()


def _raw_like(key: str) -> bool:
    """A curated part in the raw line format (readable wherever raw files are)."""
    return key.endswith("." + JsonLinesGzip.extension)


# ---------------------------------------------------------------- the pure part


def distinct_sorted(records: Iterable[Record]) -> list[Record]:
    """One record per identity, the one the aggregation counts (`dedupe`), sorted by vehicle,
    time, then reading id."""
    return sorted(dedupe(records), key=_order)


_order = attrgetter("vehicle_id", "ts", "reading_id")


_SAMPLE = 2000


def split_parts(
    records: Sequence[Record], encode: Callable[[Sequence[Record]], bytes], target: int
) -> list[tuple[int, bytes]]:
    """`records` encoded in consecutive runs, with their lengths, each at most `target` bytes
    once encoded (a run of one reading that alone exceeds it is kept whole). The first guess
    of a run's length comes from the encoded size of a sample; a run over the target is
    halved until it fits."""
    if not records:
        return []
    sample = records[:_SAMPLE]
    per_record = max(1.0, len(encode(sample)) / len(sample))
    step = max(1, int(target * 0.9 / per_record))
    out: list[tuple[int, bytes]] = []
    pending = [records[i : i + step] for i in range(0, len(records), step)]
    pending.reverse()
    while pending:
        run = pending.pop()
        data = encode(run)
        if len(data) > target and len(run) > 1:
            half = len(run) // 2
            pending.extend((run[half:], run[:half]))
            continue
        out.append((len(run), data))
    return out


def part_name(index: int, digest: str, extension: str) -> str:
    return f"part-{index:05d}-{digest}.{extension}"


def content_digest(parts: Sequence[bytes]) -> str:
    h = hashlib.blake2b(digest_size=6)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


# ---------------------------------------------------------------- the manifest and the state


class PartEntry(msgspec.Struct):
    key: str
    readings: int
    bytes: int


class Manifest(msgspec.Struct):
    """`curated/<hour>/_manifest.json`: the hour's current parts (readers may go by it)."""

    hour_start: datetime
    format: str
    readings: int
    raw_files: int
    parts: list[PartEntry]


class _HourState(msgspec.Struct):
    sources: list[str]  # every raw key the curated hour holds the readings of
    parts: list[str]


class _State(msgspec.Struct):
    version: int = 1
    hours: dict[str, _HourState] = {}


_manifest_decoder = msgspec.json.Decoder(Manifest)
_state_decoder = msgspec.json.Decoder(_State)
_encoder = msgspec.json.Encoder()


def curated_prefix(hour: datetime) -> str:
    return lake.CURATED + lake.hour_path(hour)


# ---------------------------------------------------------------- the use case


@dataclass(frozen=True, slots=True)
class CurateResult:
    hour: datetime
    parts: list[str]
    readings: int
    raw_records: int
    raw_files: int
    bytes: int
    removed: int  # objects of an earlier version deleted
    sources: list[str]  # every raw key the hour now holds the readings of


HourRunner = Callable[[Sequence[tuple[datetime, list[str]]]], Iterable[CurateResult]]
"""Writes the hours of a todo (`CurateHours.write`), yielding each result as it is done."""


@dataclass(frozen=True, slots=True)
class RetireResult:
    hour: datetime
    removed: list[str]


class CurateHours:
    """Writes curated hours; finds the hours to (re)curate; retires raw files."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        fmt: CuratedFormat,
        *,
        grace: float = 600.0,
        part_bytes: int = 128 * 1024 * 1024,
        raw_retention: float | None = None,
        step: Callable[[str], None] | None = None,
    ) -> None:
        if raw_retention is not None and not fmt.lossless:
            raise ValueError("raw retention needs a lossless curated format (jsonl)")
        self.storage = storage
        self.clock = clock
        self.fmt = fmt
        self.grace = timedelta(seconds=grace)
        self.part_bytes = part_bytes
        self.raw_retention = None if raw_retention is None else timedelta(seconds=raw_retention)
        self._step = step or (lambda point: None)
        self._state: _State | None = None

    # ------------------------------------------------------------ state

    def state(self) -> _State:
        if self._state is None:
            try:
                self._state = _state_decoder.decode(self.storage.get(STATE))
            except NotFound:
                self._state = _State()
        return self._state

    def _save(self) -> None:
        self.storage.put(STATE, _encoder.encode(self.state()))

    def closed(self, hour: datetime, now: datetime | None = None) -> bool:
        return (now or self.clock.now()) >= hour + HOUR + self.grace

    # ------------------------------------------------------------ what to do

    def pending(self, raw_hours: dict[str, list[str]]) -> list[tuple[datetime, list[str]]]:
        """Closed hours with a raw file the curated copy was not built from."""
        now = self.clock.now()
        hours = self.state().hours
        todo: list[tuple[datetime, list[str]]] = []
        for text, keys in sorted(raw_hours.items()):
            hour = lake.parse_hour(text)
            if not self.closed(hour, now):
                continue
            done = hours.get(text)
            if done is None or not set(keys) <= set(done.sources):
                todo.append((hour, keys))
        return todo

    def aggregation_inputs(self, raw_hours: dict[str, list[str]]) -> dict[str, list[str]]:
        """The aggregation's inputs per hour: the raw files, plus, for an hour some of whose
        raw files are gone (retired), the curated parts that hold their readings."""
        out = dict(raw_hours)
        for text, done in self.state().hours.items():
            present = out.get(text, [])
            if not set(done.sources) - set(present):
                continue
            parts = self._current_parts(lake.parse_hour(text), done)
            if all(_raw_like(k) for k in parts):
                out[text] = sorted({*present, *parts})
            else:
                # Parquet parts cannot be read as raw lines: the hour's aggregate stays as it
                # is rather than be rewritten from what is left of its raw files.
                out.pop(text, None)
        return out

    # ------------------------------------------------------------ work

    def changed(
        self, raw_hours: dict[str, list[str]], run: HourRunner | None = None
    ) -> list[CurateResult]:
        """Curate the pending hours, here or by `run` (which may use other processes), and
        record each in the state as it is done."""
        todo = self.pending(raw_hours)
        results = []
        for r in (run or self._run_here)(todo):
            self.record(r)
            results.append(r)
        return sorted(results, key=lambda r: r.hour)

    def _run_here(self, todo: Sequence[tuple[datetime, list[str]]]) -> Iterable[CurateResult]:
        return (self.write(hour, keys) for hour, keys in todo)

    def hour(self, hour: datetime, keys: Sequence[str]) -> CurateResult:
        result = self.write(hour, keys)
        self.record(result)
        return result

    def record(self, result: CurateResult) -> None:
        """The hour is done: saved last, so a run killed before does the hour again."""
        self.state().hours[lake.format_hour(result.hour)] = _HourState(
            result.sources, result.parts)
        self._save()

    def write(self, hour: datetime, keys: Sequence[str]) -> CurateResult:
        """Write the hour's parts and manifest, and delete what else the hour held; the state
        is the caller's to `record`."""
        text = lake.format_hour(hour)
        done = self.state().hours.get(text)
        records: list[Record] = []
        for key in keys:
            records.extend(read_records(self.storage, key))
        raw_records = len(records)
        sources = set(keys)
        if done is not None:
            gone = set(done.sources) - sources
            if gone:  # retired raw files: their readings are in the current curated parts
                for key in self._current_parts(hour, done):
                    fmt = _JSONL if _raw_like(key) else self.fmt
                    records.extend(fmt.decode(self.storage.get(key)))
                sources |= gone
        readings = distinct_sorted(records)
        del records
        runs = split_parts(readings, self.fmt.encode, self.part_bytes)
        counts = [n for n, _ in runs]
        parts = [data for _, data in runs]
        del runs
        digest = content_digest(parts)
        prefix = curated_prefix(hour)
        names = [prefix + part_name(i, digest, self.fmt.extension) for i in range(len(parts))]
        for name, data in zip(names, parts, strict=True):
            self.storage.put(name, data)
            self._step("curate.after_part")
        manifest = Manifest(
            hour.astimezone(UTC), self.fmt.extension, len(readings), len(sources),
            [PartEntry(n, c, len(d)) for n, c, d in zip(names, counts, parts, strict=True)],
        )
        self.storage.put(prefix + MANIFEST, _encoder.encode(manifest))
        self._step("curate.after_manifest")
        keep = {*names, prefix + MANIFEST}
        stale = [k for k in self.storage.list(prefix) if k not in keep]
        for k in stale:
            self.storage.delete(k)
        return CurateResult(hour, names, len(readings), raw_records, len(keys),
                            sum(map(len, parts)), len(stale), sorted(sources))

    def _current_parts(self, hour: datetime, done: _HourState) -> list[str]:
        """The hour's parts as its manifest names them: the manifest is written before anything
        is deleted, so it names parts that exist even when a run died before `record` (whose
        state may still name parts that run deleted)."""
        manifest = read_manifest(self.storage, hour)
        return done.parts if manifest is None else [p.key for p in manifest.parts]

    def retire(self, raw_hours: dict[str, list[str]] | None = None) -> list[RetireResult]:
        """Delete the raw files of curated hours older than the retention (none without one):
        only the files the curated copy was built from. `raw_hours`: the raw files per hour,
        when the caller has listed them already."""
        if self.raw_retention is None:
            return []
        now = self.clock.now()
        results = []
        for text, done in sorted(self.state().hours.items()):
            hour = lake.parse_hour(text)
            if now < hour + HOUR + self.raw_retention:
                continue
            if raw_hours is None:
                present = set(self.storage.list(lake.raw_prefix(hour)))
            else:
                present = set(raw_hours.get(text, ()))
            gone = [k for k in done.sources if k in present]
            for k in gone:
                self.storage.delete(k)
            if gone:
                results.append(RetireResult(hour, gone))
        return results


def read_manifest(storage: Storage, hour: datetime) -> Manifest | None:
    try:
        return _manifest_decoder.decode(storage.get(curated_prefix(hour) + MANIFEST))
    except NotFound:
        return None
