"""The aggregation's state (`aggregates/_state/hourly.json`) lists every hour's files: it is saved
every few hours of a run and at its end, so a run over all of a long lake's hours writes it a
bounded number of times; a failed hour still leaves the hours before it recorded."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import aggregate as aggregate_module
from telemetry.domain import lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.errors import CorruptRawFile
from telemetry.domain.readings import Record, encode_record
from tests.strategies import HOUR

HOURS = [HOUR + timedelta(hours=h) for h in range(10)]


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.state_puts = 0

    def put(self, key: str, data: bytes) -> None:
        if key == lake.AGGREGATE_STATE:
            self.state_puts += 1
        super().put(key, data)


def _lake() -> CountingStorage:
    storage = CountingStorage()
    for i, hour in enumerate(HOURS):
        record = Record(f"r{i}", "v1", hour, hour, {"speed": float(i)})
        storage.put(lake.raw_key(hour, "f", False), encode_record(record) + b"\n")
    return storage


def _recorded(storage: MemoryStorage) -> list[str]:
    return sorted(msgspec.json.decode(storage.get(lake.AGGREGATE_STATE))["hours"])


def test_the_state_is_saved_every_few_hours_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = _lake()
    assert len(AggregateHours(storage).changed()) == 10
    assert storage.state_puts == 10  # a small lake: after every hour
    monkeypatch.setattr(aggregate_module, "SAVES_PER_RUN", 3)
    storage = _lake()
    assert len(AggregateHours(storage).changed()) == 10
    assert storage.state_puts == 4  # after hours 3, 6 and 9, and at the end
    assert _recorded(storage) == [lake.format_hour(h) for h in HOURS]
    assert AggregateHours(storage).changed() == []


def test_a_failed_hour_leaves_the_hours_before_it_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregate_module, "SAVES_PER_RUN", 2)  # saves every 5 hours
    storage = _lake()
    bad = lake.raw_key(HOURS[6], "bad", False)
    storage.put(bad, b"not json\n")
    with pytest.raises(CorruptRawFile):
        AggregateHours(storage).changed()
    assert _recorded(storage) == [lake.format_hour(h) for h in HOURS[:6]]
    storage.delete(bad)
    assert [r.hour for r in AggregateHours(storage).changed()] == HOURS[6:]
