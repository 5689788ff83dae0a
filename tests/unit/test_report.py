"""The HTML report without a browser: every announced chart drawn, signals picked from the
known VSS names the vehicle has, the GNSS track paired from latitude and longitude."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dependency_injector import providers

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import lake
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.readings import Reading, ReadingRules, Record
from telemetry.domain.triggers import Measured, Measurements, Thresholds, evaluate
from telemetry.domain.worker_state import STATE_PREFIX
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.report import ReportInput, gather, render, signals_of
from telemetry.entrypoints.settings import Settings, load_settings
from telemetry.entrypoints.worker_publish import StatePublisher
from tests.support.fakes import FakeClock
from tests.support.ingest import SyncIngest

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def _rec(i: int, **signals: float) -> Record:
    ts = T0 + timedelta(seconds=i)
    return Record(f"r{i}", "ev-1", ts, ts, {k.replace("_", "."): v for k, v in signals.items()})


def test_signals_are_the_known_ones_present_and_the_track_pairs_coordinates() -> None:
    records = [
        _rec(0, Vehicle_Speed=10.0, Vehicle_Powertrain_TractionBattery_StateOfCharge_Current=80.0),
        _rec(1, Vehicle_CurrentLocation_Latitude=48.1),  # no longitude yet: no point
        _rec(2, Vehicle_CurrentLocation_Longitude=11.5),
        _rec(3, Vehicle_CurrentLocation_Latitude=48.2, Vehicle_CurrentLocation_Longitude=11.6,
             Vehicle_Cabin_Temperature=21.0),
    ]
    series, track = signals_of(records)
    assert set(series) == {"Vehicle.Speed",
                           "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"}
    assert track == [(48.1, 11.5), (48.2, 11.6)]


def _input(**more: object) -> ReportInput:
    d = LatencyDistribution()
    d.add_many([100.0, 400.0, 2500.0])
    m = Measurements(Measured(1.0, "s", "w"), Measured(0.02, "s", "w"), Measured(3.0, "s", "w"),
                     Measured(2.5, "s", "w"), 5.0)
    r = ReportInput("t <&> report", T0.timestamp(), 900, 1, d, d, [(T0.timestamp(), 30)], 5.0,
                    [(T0.timestamp(), 3), (T0.timestamp() + 3, 1)], T0,
                    [("car-1", 20), ("car-2", 10)], [(T0, 102, 100)],
                    evaluate(m, Thresholds()))
    for k, v in more.items():
        setattr(r, k, v)
    return r


def test_every_announced_chart_is_drawn_and_text_is_escaped() -> None:
    page = render(_input(vehicle="ev-1",
                         signals={"Vehicle.Speed": [(0.0, 1.0), (1.0, 3.0)]},
                         track=[(48.1, 11.5), (48.2, 11.6)]))
    charts = json.loads(re.search(r"data-charts='([^']*)'", page).group(1).replace("&quot;", '"'))
    assert charts == ["received_to_stored", "ts_to_stored", "throughput", "vehicles",
                      "duplicates", "signal:Vehicle.Speed", "track"]
    for name in charts:
        fig = re.search(rf'data-chart="{re.escape(name)}">(.*?)</figure>', page, re.DOTALL)
        assert fig and "<svg" in fig.group(1) and "no data" not in fig.group(1), name
    assert "t &lt;&amp;&gt; report" in page and "t <&> report" not in page
    assert "duplicate_rate" in page and 'class="fires"' in page  # 2% fires
    assert "http://" not in page and "https://" not in page


def test_without_a_vehicle_there_is_no_signal_section() -> None:
    page = render(_input())
    assert "signal:" not in page and "track" not in page


# ---------------------------------------------------------------- gathering, from the lake


class CountingStorage(MemoryStorage):
    """The in-memory lake, counting what is read."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: Counter[str] = Counter()
        self.got: Counter[str] = Counter()

    def list(self, prefix: str) -> list[str]:
        self.listed[prefix] += 1
        return super().list(prefix)

    def get(self, key: str) -> bytes:
        self.got[key] += 1
        return super().get(key)


def _pipeline(tmp_path: Path, *, resent: int, clock: FakeClock,
              **env: str) -> tuple[Container, Settings, CountingStorage]:
    """100 readings of one vehicle stored, `resent` of them sent a second time, a worker's
    state published and the hour aggregated: what the demo leaves in its lake."""
    settings = load_settings({"TELEMETRY_DATA_DIR": str(tmp_path), "TELEMETRY_QUEUE": "memory",
                              "TELEMETRY_STORAGE": "memory", **env})
    container = create_container(settings)
    storage = CountingStorage()
    container.storage.override(providers.Object(storage))
    queue = container.queue()
    ingest = SyncIngest(queue, clock, ReadingRules())
    readings = [Reading("car-1", clock.now() - timedelta(minutes=30, seconds=i),
                        {"Vehicle.Speed": float(i)}, f"r{i}") for i in range(100)]
    ingest.execute(readings, None)
    if resent:  # the same ids again: duplicates in the raw files
        ingest.execute(readings[:resent], None)
    pub = StatePublisher(storage, window_s=settings.trigger_window, every=0, name="w1",
                         clock=clock)
    DrainBatches(queue, storage, clock, BatchPolicy(max_age_seconds=0)).until_empty()
    pub.publish()
    container.aggregate_hours().changed()
    return container, settings, storage


NOW = FakeClock(datetime(2026, 11, 29, 2, 0, tzinfo=UTC))


def test_gather_reads_the_worker_states_and_the_counts_once(tmp_path: Path) -> None:
    container, settings, storage = _pipeline(tmp_path, resent=0, clock=NOW)
    storage.listed.clear()
    storage.got.clear()
    r = gather(container, settings, now=NOW.time())
    assert r.workers == 1 and r.duplicates and r.triggers  # both were used
    assert storage.listed[STATE_PREFIX] == 1
    assert storage.got[lake.AGGREGATE_STATE] == 1


def test_the_demos_deliberate_resends_fire_the_duplicate_rate_as_expected(
    tmp_path: Path,
) -> None:
    container, settings, _ = _pipeline(tmp_path, resent=3, clock=NOW)
    plain = gather(container, settings, now=NOW.time())
    [dup] = [t for t in plain.triggers if t.name == "duplicate_rate"]
    assert dup.fires and dup.value_text == "3.00%"
    assert plain.expected == {}
    page = render(plain)
    assert "FIRES: look at worker crash frequency" in page and 'class="expected"' not in page

    demo = gather(container, settings, now=NOW.time(), resent_on_purpose=3)
    assert "3 readings were sent twice on purpose" in demo.expected["duplicate_rate"]
    assert "without them the rate is 0.00%" in demo.expected["duplicate_rate"]
    page = render(demo)
    assert '<tr class="expected"><td>duplicate_rate</td>' in page
    assert "FIRES, expected here: 3 readings were sent twice" in page
    assert "look at worker crash frequency" not in page


def test_duplicates_beyond_the_deliberate_ones_still_fire_plainly(tmp_path: Path) -> None:
    container, settings, _ = _pipeline(tmp_path, resent=3, clock=NOW)
    # 1 of the 3 duplicates sent on purpose: the other 2 (2%) are over the 1% threshold.
    r = gather(container, settings, now=NOW.time(), resent_on_purpose=1)
    assert r.expected == {}
    assert 'class="fires"><td>duplicate_rate</td>' in render(r)
