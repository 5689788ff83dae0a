"""The synthetic fleet (telemetry.domain.simulation) and the simulate command around it."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.adapters.ingest_client import ClientSummary, RejectedError, ensure_reading_id
from telemetry.domain import simulation as sim
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.domain.simulation import Fleet, FleetConfig, Gearbox, Phase, SimVehicle
from telemetry.entrypoints.cli import main
from telemetry.entrypoints.simulate import simulate
from tests.shared_data import VSS_CSV

START = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
EPS = 1e-9
COOLANT_MAX = 95.0  # thermostat temperature plus the most a full load adds


def _vehicle(seed: int, *, electric: bool) -> SimVehicle:
    return SimVehicle("veh-1", random.Random(seed), electric=electric)


def _trace(v: SimVehicle, dt: float, steps: int) -> list[sim.VehicleState]:
    out = [_copy(v.state)]
    for _ in range(steps):
        v.advance(dt)
        out.append(_copy(v.state))
    return out


def _copy(s: sim.VehicleState) -> sim.VehicleState:
    return sim.VehicleState(**vars(s))


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(a))


# ------------------------------------------------------------------ names and the reading rules


def test_signal_names_are_vss_sensors_with_matching_types() -> None:
    with gzip.open(VSS_CSV, "rt", encoding="utf-8") as f:
        vss = {row["Signal"]: row for row in csv.DictReader(f)}
    kinds = {"float": float, "double": float, "boolean": bool}
    for name, py_type in sim.SIGNAL_TYPES.items():
        assert name in vss, f"{name} is not in the VSS catalogue"
        row = vss[name]
        assert row["Type"] == "sensor", name
        assert not row["Deprecated"], name
        expected = kinds.get(row["DataType"], int if "int" in row["DataType"] else None)
        assert expected is py_type, f"{name}: VSS {row['DataType']}, simulated {py_type}"
    # Every value of a long, varied run is within the catalogue's min/max and unsigned ranges.
    fleet = Fleet(FleetConfig(vehicles=6, gaps_per_hour=0), random.Random(3), START)
    for r in fleet.run(duration=1800, rate=0.5):
        for name, value in r["signals"].items():
            row = vss[name]
            if row["Min"]:
                assert value >= float(row["Min"]), (name, value)
            if row["Max"]:
                assert value <= float(row["Max"]), (name, value)
            if row["DataType"].startswith("uint"):
                assert value >= 0, (name, value)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), vehicles=st.integers(1, 6), rate=st.sampled_from([0.2, 1, 10]),
       skew=st.floats(0, 30), gaps=st.sampled_from([0.0, 600.0]))
def test_every_reading_follows_the_reading_rules(
    seed: int, vehicles: int, rate: float, skew: float, gaps: float
) -> None:
    config = FleetConfig(vehicles=vehicles, clock_skew_s=skew, gaps_per_hour=gaps)
    fleet = Fleet(config, random.Random(seed), START)
    readings = fleet.run(duration=20, rate=rate)
    assert len(readings) == vehicles * sim.ticks(20, rate)
    body = msgspec.json.encode(readings)
    decoded = msgspec.json.decode(body, type=list[Reading])  # the service's own decoder types
    # The service's clock at the end of the run: nothing later than its allowed skew.
    now = START + timedelta(seconds=20)
    assert ReadingRules(max_batch=len(decoded)).check(decoded, now) == []
    kinds = {v.id: v.electric for v in fleet.vehicles}
    for r in readings:
        names = set(r["signals"])
        assert names == (sim.ELECTRIC_SIGNALS if kinds[r["vehicle_id"]] else
                         sim.COMBUSTION_SIGNALS)
        for name, value in r["signals"].items():
            assert type(value) is sim.SIGNAL_TYPES[name], (name, value)


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    def run(seed: int) -> bytes:
        fleet = Fleet(FleetConfig(vehicles=5, gaps_per_hour=300), random.Random(seed), START)
        return msgspec.json.encode(fleet.run(duration=120, rate=2))

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_simulate_dry_run_is_deterministic_under_seed(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--dry-run", "--vehicles", "3", "--rate", "2", "--duration", "30",
            "--start", "2026-11-29T01:00:00Z"]

    def out(seed: str) -> str:
        assert main([*argv, "--seed", seed]) == 0
        return capsys.readouterr().out

    first = out("7")
    assert first == out("7")
    assert first != out("8")
    lines = first.splitlines()
    assert len(lines) == 3 * 60
    readings = [msgspec.json.decode(line, type=Reading) for line in lines]
    assert {r.vehicle_id for r in readings} == {"veh-0000", "veh-0001", "veh-0002"}


# ------------------------------------------------------------------ the vehicle model


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), electric=st.booleans(),
       dt=st.sampled_from([0.05, 0.1, 0.5, 1.0, 2.0, 5.0]), steps=st.integers(1, 300))
def test_vehicle_physics_invariants(seed: int, electric: bool, dt: float, steps: int) -> None:
    v = _vehicle(seed, electric=electric)
    trace = _trace(v, dt, steps)
    box = v.gearbox
    for a, b in itertools.pairwise(trace):
        assert b.speed >= 0
        # Continuous speed, bounded acceleration and braking, whatever the sampling period.
        assert b.speed - a.speed <= sim.MAX_ACCEL * dt + EPS
        assert a.speed - b.speed <= sim.MAX_BRAKE * dt + EPS
        assert b.odometer >= a.odometer
        assert b.odometer - a.odometer <= max(a.speed, b.speed) * dt + sim.MAX_ACCEL * dt * dt
        if electric:
            assert 0 <= b.soc <= a.soc  # no regenerative braking, no charging
            assert b.battery_power_w < 0  # always drawing: at least the auxiliaries
        else:
            assert b.fuel_l <= a.fuel_l
    for s in trace:
        if electric:
            continue
        assert 0 <= s.gear <= box.top
        assert s.rpm == box.engine_rpm(s.speed, s.gear)
        assert box.idle_rpm <= s.rpm <= box.redline_rpm
        if s.speed > 0:
            assert s.gear >= 1  # moving in neutral only happens in films
        if s.gear == 0:
            assert s.rpm == box.idle_rpm
        assert -10 <= s.coolant <= COOLANT_MAX


def test_engine_speed_follows_gear_and_wheel_speed() -> None:
    box = Gearbox()
    v = 100 / 3.6
    wheel_rpm = v / (2 * math.pi * box.wheel_radius_m) * 60
    assert box.engine_rpm(v, 6) == pytest.approx(wheel_rpm * 0.69 * 3.6)
    assert box.engine_rpm(v, 6) == pytest.approx(2059, abs=2)
    assert box.engine_rpm(0.0, 1) == box.idle_rpm  # torque converter slip at a standstill
    assert box.engine_rpm(v, 0) == box.idle_rpm  # neutral
    assert box.select(v, 1) == 6  # cruising at 100 km/h: top gear
    assert box.select(30 / 3.6, 6) in (3, 4)


@settings(max_examples=200, deadline=None)
@given(speed=st.floats(0.1, 45), gear=st.integers(0, 6))
def test_gear_selection_keeps_the_engine_in_its_band(speed: float, gear: int) -> None:
    box = Gearbox()
    g = box.select(speed, gear)
    geared = box.engine_rpm(speed, g)
    if g < box.top:
        assert geared <= box.upshift_rpm
    if g > 1:
        assert geared >= box.downshift_rpm
    # Hysteresis: the gear chosen is stable, so the box does not hunt.
    assert box.select(speed, g) == g


def test_drive_cycles_have_idle_urban_and_highway_phases() -> None:
    vehicles = [_vehicle(seed, electric=seed % 2 == 0) for seed in range(6)]
    phases: Counter[Phase] = Counter()
    speeds: dict[Phase, list[float]] = defaultdict(list)
    stops_in_town = 0
    for _ in range(2 * 3600 // 2):
        for v in vehicles:
            v.advance(2.0)
            phases[v.state.phase] += 1
            speeds[v.state.phase].append(v.state.speed * 3.6)
            stops_in_town += v.state.phase is Phase.URBAN and v.state.speed == 0
    assert set(phases) == set(Phase)
    assert sum(s == 0 for s in speeds[Phase.IDLE]) > 0.5 * len(speeds[Phase.IDLE])
    assert 20 < statistics.mean(speeds[Phase.URBAN]) < 50
    assert stops_in_town > 100  # traffic lights
    assert 85 < statistics.mean(speeds[Phase.HIGHWAY]) < 130
    assert max(max(s) for s in speeds.values()) <= 130


def test_coolant_warms_up_from_cold_to_operating_temperature() -> None:
    v = next(v for seed in range(100)
             if (v := _vehicle(seed, electric=False)).state.phase is Phase.IDLE)
    assert v.state.coolant == v.ambient  # a cold start
    trace = _trace(v, 1.0, 30 * 60)
    coolant = [s.coolant for s in trace]
    warming = [c for c in coolant if c < 88]
    assert warming == sorted(warming)  # rising until the thermostat opens
    assert coolant[20 * 60] > 80
    assert max(coolant) <= COOLANT_MAX


def test_state_of_charge_falls_with_distance_driven() -> None:
    v = _vehicle(2, electric=True)
    trace = _trace(v, 1.0, 3600)
    km = (trace[-1].odometer - trace[0].odometer) / 1000
    used_kwh = (trace[0].soc - trace[-1].soc) / 100 * v.capacity_kwh
    assert km > 20
    assert all(b.soc <= a.soc for a, b in itertools.pairwise(trace))
    # A mid-size EV: 12-30 kWh/100 km, auxiliaries included.
    assert 12 < used_kwh / km * 100 < 30


@pytest.mark.parametrize("dt", [0.1, 1.0])
def test_gps_moves_along_the_route_at_the_vehicle_speed(dt: float) -> None:
    fleet = Fleet(FleetConfig(vehicles=3, gaps_per_hour=0), random.Random(9), START)
    by_vehicle: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in fleet.run(duration=600, rate=1 / dt):
        by_vehicle[r["vehicle_id"]].append(r["signals"])
    for signals in by_vehicle.values():
        chord_total = 0.0
        for a, b in itertools.pairwise(signals):
            chord = _haversine(a[sim.LATITUDE], a[sim.LONGITUDE], b[sim.LATITUDE],
                               b[sim.LONGITUDE])
            travelled = b[sim.ODOMETER] - a[sim.ODOMETER]
            # A fix moves at most as far as the wheels went; + 1.05 m for the odometer's whole
            # metres and the fixes' 7 decimals.
            assert chord <= travelled * 1.003 + 1.05
            chord_total += chord
            if b[sim.SPEED] > 20 and a[sim.HEADING] == b[sim.HEADING] and chord > 5:
                # On a straight segment, the fix moves where the heading points.
                bearing = math.degrees(math.atan2(
                    math.radians(b[sim.LONGITUDE] - a[sim.LONGITUDE])
                    * math.cos(math.radians(a[sim.LATITUDE])),
                    math.radians(b[sim.LATITUDE] - a[sim.LATITUDE])))
                assert abs((bearing - b[sim.HEADING] + 180) % 360 - 180) < 1.0
        odo = signals[-1][sim.ODOMETER] - signals[0][sim.ODOMETER]
        assert odo > 1000
        assert chord_total >= 0.95 * odo - len(signals)  # corners cut only a little


def test_vehicles_stay_around_their_depot() -> None:
    fleet = Fleet(FleetConfig(vehicles=3, gaps_per_hour=0), random.Random(1), START)
    farthest = [0.0] * 3
    for _ in range(2 * 3600 // 5):
        fleet.tick(5.0)
        for i, v in enumerate(fleet.vehicles):
            farthest[i] = max(farthest[i], math.hypot(v.state.x, v.state.y))
    # Far enough to be pulled back (beyond 20 km), never far beyond.
    assert min(farthest) > 15_000 and max(farthest) < 30_000


# ------------------------------------------------------------------ clocks and connectivity


def _epoch(r: dict[str, Any]) -> float:
    return datetime.fromisoformat(r["ts"]).timestamp()


def test_clock_skew_is_constant_per_vehicle_and_jitter_bounded() -> None:
    config = FleetConfig(vehicles=20, clock_skew_s=5.0, jitter_s=0.05, gaps_per_hour=0)
    fleet = Fleet(config, random.Random(4), START)
    offsets: dict[str, list[float]] = defaultdict(list)
    for tick in range(200):
        for r in fleet.tick(0.1):
            offsets[r["vehicle_id"]].append(_epoch(r) - START.timestamp() - tick * 0.1)
    skews = []
    for vid, off in offsets.items():
        assert max(off) - min(off) <= 2 * 0.04 + 1e-5, vid  # jitter capped under half a period
        skews.append(statistics.mean(off))
    assert len({round(s, 2) for s in skews}) == 20  # every vehicle has its own clock
    assert statistics.pstdev(skews) > 1.0
    assert max(abs(s) for s in skews) <= 25.0
    for off in offsets.values():  # jitter never reorders one vehicle's readings
        ts = [t + i * 0.1 for i, t in enumerate(off)]
        assert ts == sorted(ts)


def test_gaps_change_when_readings_arrive_not_what_they_say() -> None:
    def run(gaps: float) -> tuple[list[list[dict[str, Any]]], sim.FleetStats]:
        fleet = Fleet(FleetConfig(vehicles=10, gaps_per_hour=gaps), random.Random(21), START)
        per_tick = [fleet.tick(1.0) for _ in range(600)]
        per_tick.append(fleet.flush())
        return per_tick, fleet.stats

    steady, steady_stats = run(0.0)
    gappy, stats = run(120.0)
    flat = [r for batch in gappy for r in batch]

    def key(r: dict[str, Any]) -> tuple[str, str]:
        return r["vehicle_id"], r["ts"]

    # Every reading delivered exactly once, the same readings as without gaps.
    assert sorted(flat, key=key) == sorted((r for b in steady for r in b), key=key)
    assert steady_stats.late == 0
    assert stats.generated == stats.delivered == len(flat) == 6000
    assert stats.late > 100 and stats.bursts > 10 and 2 <= stats.max_late_s <= 21
    # Late data: when a link comes back, the readings of the gap go out in a burst, in order,
    # with their original ts (one a second here), before the reading of that moment.
    late = len(gappy[-1])
    for batch in gappy[:-1]:
        per_vehicle: dict[str, list[float]] = defaultdict(list)
        for r in batch:
            per_vehicle[r["vehicle_id"]].append(_epoch(r))
        for ts in per_vehicle.values():
            n = len(ts)
            for i, t in enumerate(ts):
                assert ts[-1] - t == pytest.approx(n - 1 - i, abs=0.05)
            late += n - 1
    assert late == stats.late


# ------------------------------------------------------------------ simulate() with a fake client


class _FakeClient:
    def __init__(self, log: list[list[str]], refuse: bool = False) -> None:
        self.summary = ClientSummary()
        self.log = log
        self.refuse = refuse
        self.last_error: RejectedError | None = None

    def send(self, readings: list[dict[str, Any]]) -> list[str]:
        ids = [ensure_reading_id(r) for r in readings]
        self.summary.sent += len(readings)
        if self.refuse:
            self.summary.rejected += len(readings)
            self.last_error = RejectedError(401, "unknown key")
            return []
        self.log.append(ids)
        self.summary.accepted += len(ids)
        return ids

    def close(self) -> None:
        pass


def test_a_lost_response_resends_the_same_batch_with_the_same_ids() -> None:
    sent: list[list[str]] = []
    r = simulate("http://unused", "k", vehicles=10, rate=20, duration=1, batch=10, seed=3,
                 lost_responses=0.5, client_factory=lambda: _FakeClient(sent))
    batches = Counter(tuple(ids) for ids in sent)
    assert r.resent_requests > 0
    assert sum(n == 2 for n in batches.values()) == r.resent_requests  # sent twice, same ids
    assert r.resent_readings == 10 * r.resent_requests
    assert len(r.accepted_ids) == len(set(r.accepted_ids)) == 200  # each reading once
    assert r.summary.accepted == 200 + r.resent_readings
    assert sum(r.accepted_by_vehicle.values()) == 200


def test_simulate_stops_early_when_the_key_is_refused() -> None:
    began = time.monotonic()
    r = simulate("http://unused", "bad", vehicles=5, rate=10, duration=30, batch=5,
                 client_factory=lambda: _FakeClient([], refuse=True))
    assert time.monotonic() - began < 5
    assert r.stopped and "401" in r.stopped
    assert r.accepted_ids == [] and r.errors


def test_simulate_dry_run_writes_ndjson_unpaced() -> None:
    out = io.StringIO()
    began = time.monotonic()
    r = simulate("http://unused", "", vehicles=4, rate=10, duration=60, seed=1, start=START,
                 dry_run=out)
    assert time.monotonic() - began < 10
    assert r.summary.sent == r.fleet.generated == 4 * 600 == len(out.getvalue().splitlines())


def test_simulate_draws_a_progress_bar_on_stderr_when_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulate("http://unused", "k", vehicles=2, rate=10, duration=0.5, progress=True,
             client_factory=lambda: _FakeClient([]))
    err = capsys.readouterr().err
    assert "\rsimulate [" in err and "100%" in err and "readings/s" in err
    assert err.endswith("\n")
