"""An hour's raw files split into slices, aggregated a slice at a time and combined exactly."""

from __future__ import annotations

import gzip
from array import array
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from operator import attrgetter
from typing import Any, TypeVar

import msgspec

from telemetry.domain.aggregation import HourAggregate, Identity, RawDecoder, aggregate_lean
from telemetry.domain.errors import CorruptRawFile
from telemetry.domain.ports.storage import MappedStorage, Storage
from telemetry.domain.readings import Record

_records_decoder = msgspec.json.Decoder(Record)
_Key = TypeVar("_Key", bound=Hashable)


def read_raw(storage: Storage, key: str) -> bytes:
    """A raw file's lines (gzip files decompressed)."""
    data = storage.get(key)
    return gzip.decompress(data) if key.endswith(".gz") else data


def lend_raw(storage: Storage, key: str) -> bytes | memoryview:
    """`read_raw`, without a copy of the file where the storage lends its bytes (a file
    mapped into memory; see `MappedStorage`): for the compiled scan, which takes either."""
    if not isinstance(storage, MappedStorage):
        return read_raw(storage, key)
    data = storage.view(key)
    return gzip.decompress(data) if key.endswith(".gz") else data


def read_records(storage: Storage, key: str) -> list[Record]:
    """A raw file's lines as `Record`s; CorruptRawFile naming the file when it is not one."""
    try:
        return _records_decoder.decode_lines(read_raw(storage, key))
    except msgspec.DecodeError as exc:
        raise CorruptRawFile(f"{key}: not a raw lake file: {exc}") from exc


def _decode_raw(decoder: RawDecoder, key: str, data: bytes) -> list[Any]:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptRawFile(f"{key}: not a raw lake file: {exc}") from exc


class HourSlice:
    """Some of an hour's raw files, decoded into lean records (all of them, for one pass).

    An hour split into slices is aggregated a slice at a time (in parallel, by the caller):
    `ids()` of every slice go to `shared_ids`, and `finish` leaves those out of the slice's
    partial, handing over their copies instead, so `combine_slices` settles each such reading
    once, by the same rule as one pass. Partials merge exactly (see `aggregation`), so the
    result is the one-pass aggregate whatever the split.

    Between processes, `fingerprints()` (8 bytes an identity) stand for the ids: the
    fingerprints found in more than one slice (`shared_ids` of them) go to
    `finish_fingerprints`, which treats every identity of this slice with such a fingerprint as
    shared. A fingerprint that two different identities happen to share only makes a reading
    go the way of the copies, which settle it exactly all the same.
    """

    def __init__(
        self, storage: Storage, keys: Sequence[str], contents: Sequence[bytes] | None = None
    ) -> None:
        """`contents`: the files' `read_raw`, when the caller has read them already."""
        self._decode(storage, keys, contents)

    def _decode(
        self, storage: Storage, keys: Sequence[str], contents: Sequence[bytes] | None
    ) -> None:
        decoder = RawDecoder()
        blobs: list[tuple[str, bytes]] = []
        lean: list[Any] = []
        for i, key in enumerate(keys):
            data = read_raw(storage, key) if contents is None else contents[i]
            blobs.append((key, data))
            lean.extend(_decode_raw(decoder, key, data))
        if decoder.generation > 1:  # a later file brought new signal names: one Struct for all
            lean = [r for key, data in blobs for r in _decode_raw(decoder, key, data)]
        self.records = lean
        self.names = decoder.names
        self.raw = len(lean)
        self._prints: array[int] | None = None

    def aggregate(
        self, hour: datetime, skip: Collection[Identity] = (), *, mergeable: bool = False
    ) -> HourAggregate | None:
        return aggregate_lean(hour, self.records, self.names, skip, mergeable=mergeable)

    def fingerprints(self) -> array[int]:
        """`hash` of each record's identity, in record order. Python's str hash is salted per
        interpreter: fingerprints compare only between this process and its forks (see
        `fingerprint_salt`)."""
        self._prints = array("q", map(hash, zip(map(_by_vehicle_id, self.records),
                                                map(_by_reading_id, self.records), strict=True)))
        return self._prints

    def finish_fingerprints(
        self, hour: datetime, shared: Collection[int]
    ) -> SliceResult | None:
        """`finish`, the shared readings being those whose fingerprint is in `shared`."""
        prints = self._prints if self._prints is not None else self.fingerprints()
        mine = list(compress(self.records, map(shared.__contains__, prints)))
        return self._finish(hour, {(r.vehicle_id, r.reading_id) for r in mine}, mine)

    def ids(self) -> list[Identity]:
        """The identities, `(vehicle_id, reading_id)`, of this slice's records."""
        return list(zip(map(_by_vehicle_id, self.records), map(_by_reading_id, self.records),
                        strict=True))

    def finish(self, hour: datetime, shared: Collection[Identity]) -> SliceResult | None:
        """The partial without the `shared` identities, ready to send; None when this slice alone
        cannot settle one of its own readings (the caller then aggregates the whole hour)."""
        mine = list(compress(self.records, map(shared.__contains__, self.ids())))
        return self._finish(hour, shared, mine)

    def _finish(
        self, hour: datetime, shared: Collection[Identity], mine: list[Any]
    ) -> SliceResult | None:
        agg = self.aggregate(hour, shared, mergeable=True)
        if agg is None:
            return None
        copies = b"".join(_lean_encoder.encode(r) + b"\n" for r in mine)
        return SliceResult(self.raw, agg, copies)


@dataclass(frozen=True, slots=True)
class SliceResult:
    raw: int
    aggregate: HourAggregate
    copies: bytes  # lean lines of the shared identities found in this slice


_by_reading_id = attrgetter("reading_id")
_by_vehicle_id = attrgetter("vehicle_id")
_lean_encoder = msgspec.json.Encoder()


def fingerprint_salt() -> int:
    """The fingerprint of a fixed identity made now: equal in two processes when their
    fingerprints compare (a fork), different otherwise."""
    return hash(("".join(("fingerprint", "-salt")), str(len("salt"))))


def shared_ids(slices: Iterable[Iterable[_Key]]) -> set[_Key]:
    """The reading identities (or fingerprints) found in more than one slice."""
    parts = list(slices)
    seen: set[_Key] = set()
    shared: set[_Key] = set()
    for i, ids in enumerate(parts):
        shared |= seen.intersection(ids)  # no set of this slice's ids is made
        if i < len(parts) - 1:
            seen.update(ids)
    return shared


def combine_slices(
    hour: datetime, results: Sequence[SliceResult | None]
) -> tuple[int, HourAggregate] | None:
    """Raw line count and aggregate of the hour from its slices' results; None when they
    cannot settle it (a slice could not, or copies of a shared reading tie)."""
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
