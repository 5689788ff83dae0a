"""A fixed lake with every shape aggregation and curation meet, and a digest of what they write.

The lake is made the way the service makes it (ingest's use case, the worker's, partials kept
and written) plus files written straight to `raw/`, as any other writer of the lake format
could: requests of many vehicles (no partials) and of one vehicle (partials), requests sent
twice, copies of a reading with other content received earlier, later or at the same instant,
client-chosen reading ids shared by two vehicles, ints, floats, bools, strings, ints and floats
in one signal, 0.0 and -0.0, sums beyond the float range, ints beyond 2**53, absent signals, a
`ts` with an offset, a gzip file, signal names first seen in a later file, and late data for an
hour already aggregated and curated (stages 1 and 2).

`digest` covers everything the pipeline writes under `aggregates/hourly/` and `curated/`.
Curated parts count by their content uncompressed and their manifests by every field but the
part keys' content digest (which is a function of the compressed bytes, so of zlib's version);
aggregates count byte for byte. The state files name raw files after their receipts, which
are random, and are left out.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.memory import MemoryQueue
from telemetry.domain import lake
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import Reading, ReadingRules, Record, encode_record
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

START = datetime(2025, 6, 1, 0, 0, tzinfo=UTC)
HOURS = 3


def _signals(rng: random.Random, *, extra: bool = False) -> dict[str, Any]:
    speed = round(rng.uniform(0, 140), 2)
    s: dict[str, Any] = {
        "Vehicle.Speed": speed,
        "Vehicle.Rpm": 750 + int(speed * 17),
        # ints and floats in one signal: the spelling of equal extremes is settled by `_tie`
        "Vehicle.Temp": rng.choice([20, 20.0, 21, 21.5, rng.randrange(15, 90)]),
        "Vehicle.Zero": rng.choice([0.0, -0.0, 0]),
        "Vehicle.IsMoving": speed > 0.5,
        "Vehicle.Gear": rng.choice(["P", "D", "R"]),
    }
    if rng.random() < 0.3:
        del s["Vehicle.Speed"]  # absent in some readings
    if rng.random() < 0.05:
        s["Vehicle.Odometer"] = 2**53 + rng.randrange(1000)  # not exact as a float
    if rng.random() < 0.02:
        s["Vehicle.Huge"] = rng.choice([1.7e308, -1.7e308, 1e300])  # sums beyond float range
    if rng.random() < 0.1:
        s["Vehicle.Speed"] = rng.randrange(0, 140)  # an int where floats are usual
    if extra:
        s["Vehicle.Late.Signal"] = rng.uniform(-1, 1)
    return s


def _ingest(root: Path, clock: FakeClock, rng: random.Random, stage: int) -> None:
    """Requests through ingest and the worker: mixed and one-vehicle, some sent twice."""
    storage = FilesystemStorage(root)
    queue = MemoryQueue(max_message_bytes=256 * 1024)
    drain = DrainBatches(queue, storage, clock, BatchPolicy(
        max_readings=150, max_bytes=1 << 40, max_age_seconds=1e9, max_open_hours=HOURS),
        partials_every=1e9)
    accept = SyncIngest(queue, clock, ReadingRules())
    hours = range(HOURS) if stage == 0 else [0]
    for h in hours:  # a gateway: many vehicles, a reading or two each, no partial
        hour = START + timedelta(hours=h)
        for q in range(12 if stage == 0 else 3):
            body = [Reading(f"veh-{(q * 7 + i) % 15:02d}", _stamp(rng, hour), _signals(rng),
                            f"c{q}-{i}" if q % 4 == 0 else None) for i in range(30)]
            # sent twice (hour 0 has no repeat outside its partials: it merges them)
            for _ in range(2 if q % 5 == 1 and h > 0 else 1):
                accept.execute(body, None)
    while drain.poll(0).received:
        pass
    drain.flush_all()  # files of these envelopes alone: the next ones' files have partials
    for h in hours:  # vehicles posting their own buffers: a partial comes with each
        hour = START + timedelta(hours=h)
        for v in range(4):
            for q in range(3 if stage == 0 else 1):
                body = [Reading(f"solo-{v}", _stamp(rng, hour), _signals(rng))
                        for _ in range(20)]
                for _ in range(2 if (v + q) % 3 == 0 else 1):
                    accept.execute(body, None)
    while drain.poll(0).received:
        pass
    drain.flush_all()


def _stamp(rng: random.Random, hour: datetime) -> datetime:
    return hour + timedelta(microseconds=rng.randrange(3_600_000_000))


def _direct(root: Path, rng: random.Random, stage: int) -> None:
    """Files written straight to `raw/`: copies that differ, a gzip file, new names."""
    storage = FilesystemStorage(root)
    for h in range(HOURS):
        hour = START + timedelta(hours=h)
        received = hour + timedelta(hours=1, minutes=5)
        records = [
            Record(f"d{stage}-{h}-{i}", f"veh-{i % 15:02d}",
                   hour + timedelta(microseconds=rng.randrange(3_600_000_000)), received,
                   _signals(rng))
            for i in range(80)
        ]
        # the same client id under two vehicles: two readings, not a repeat
        records.append(Record("shared-id", "veh-00", hour + timedelta(minutes=1), received,
                              {"Vehicle.Speed": 1.5}))
        records.append(Record("shared-id", "veh-01", hour + timedelta(minutes=2), received,
                              {"Vehicle.Speed": 2.5}))
        copies: list[Record] = []
        for r in records[:30:3] if h > 0 else ():  # the same reading again, identical
            copies.append(r)
        for r in records[1:30:3] if h > 0 else ():  # received later, other content: loses
            copies.append(Record(r.reading_id, r.vehicle_id, r.ts,
                                 r.received_at + timedelta(seconds=3), {"Vehicle.Speed": 999.0}))
        for r in records[2:30:3] if h > 0 else ():  # received earlier, other content: wins
            copies.append(Record(r.reading_id, r.vehicle_id, r.ts + timedelta(seconds=1),
                                 r.received_at - timedelta(seconds=3), {"Vehicle.Speed": -1.0}))
        if h == 2:  # received at the same instant, other content: the smaller encoding wins
            r = records[40]
            copies.append(Record(r.reading_id, r.vehicle_id, r.ts, r.received_at,
                                 {"Vehicle.Speed": 0.25}))
        lines = b"".join(encode_record(r) + b"\n" for r in records)
        # a ts written with an offset (the format's decoders accept it; first/last are UTC)
        lines += (b'{"reading_id":"d%d-%d-off","vehicle_id":"veh-04","ts":"%s",'
                  b'"received_at":"%s","signals":{"Vehicle.Speed":4.5,"Vehicle.Rpm":800}}\n' % (
                      stage, h, _offset_ts(hour + timedelta(minutes=45)).encode(),
                      received.isoformat().replace("+00:00", "Z").encode()))
        storage.put(lake.raw_key(hour, f"direct-{stage}-a", False), lines)
        storage.put(lake.raw_key(hour, f"direct-{stage}-b", True), gzip.compress(
            b"".join(encode_record(r) + b"\n" for r in copies), mtime=0))
        if h == 0:  # names no file before it had
            late = [Record(f"d{stage}-{h}-n{i}", f"veh-{i:02d}", hour + timedelta(minutes=i),
                           received, _signals(rng, extra=True)) for i in range(10)]
            storage.put(lake.raw_key(hour, f"direct-{stage}-z", False),
                        b"".join(encode_record(r) + b"\n" for r in late))


def _offset_ts(t: datetime) -> str:
    """`t` spelled with a +02:00 offset."""
    return (t + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00"


def build(root: Path, stage: int) -> None:
    """Add stage `stage`'s data to the lake at `root`: 0 the first, 1 and 2 late data."""
    rng = random.Random(1000 + stage)
    clock = FakeClock(START + timedelta(hours=HOURS, minutes=1 + 10 * stage))
    _ingest(root, clock, rng, stage)
    if stage < 2:
        _direct(root, rng, stage)


_PART_DIGEST = re.compile(r"-[0-9a-f]{12}\.")
_PART_DIGEST_B = re.compile(rb"-[0-9a-f]{12}\.")


def digest(root: Path) -> str:
    """sha256 of what the pipeline wrote under `aggregates/hourly/` and `curated/`."""
    h = hashlib.sha256()
    storage = FilesystemStorage(root)
    for key in storage.list(lake.AGGREGATES):
        h.update(key.encode() + b"\0" + storage.get(key) + b"\0")
    for key in storage.list(lake.CURATED):
        data = storage.get(key)
        if key.endswith(".gz"):
            data = gzip.decompress(data)
        h.update(_PART_DIGEST.sub("-*.", key).encode() + b"\0"
                 + _PART_DIGEST_B.sub(b"-*.", data) + b"\0")
    return h.hexdigest()
