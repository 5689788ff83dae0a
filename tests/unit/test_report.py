"""The HTML report without a browser: every announced chart drawn, signals picked from the
known VSS names the vehicle has, the GNSS track paired from latitude and longitude."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.readings import Record
from telemetry.domain.triggers import Measured, Measurements, Thresholds, evaluate
from telemetry.entrypoints.report import ReportInput, render, signals_of

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
