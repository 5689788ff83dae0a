"""A synthetic fleet for `telemetry simulate`: drive cycles, powertrains, telematics units.

Pure: no clock, no I/O, no global random state. Time is what the caller says (`start`, then the
`dt` of each tick), and randomness comes from the `random.Random` passed in, so one seed gives
the same readings every time. Each vehicle draws from generators of its own (driving, sensor
noise, clock, link), so changing the connectivity settings changes when readings are delivered,
never what they say.

Per vehicle:

- **Drive cycle.** IDLE (parked, engine running), URBAN (25-55 km/h with stops at lights and
  junctions) and HIGHWAY (90-130 km/h) phases of minutes each. Speed follows the phase's target
  with bounded acceleration and braking, so it is continuous and never negative.
- **Powertrain.** Combustion: a 6-speed automatic shifting with hysteresis, engine speed = wheel
  speed x gear ratio x final drive (never under idle: the torque converter slips), coolant
  warming from ambient to operating temperature, fuel falling with the energy drawn. Battery
  electric: state of charge falling with traction and auxiliary energy; regenerative braking is
  not modelled, so the charge never rises.
- **Route.** Waypoints drawn as the vehicle needs them (short segments and turns in town, long
  straight ones on the highway, pulled back toward the depot beyond a radius); the GPS fix moves
  along them by the distance the wheels covered.
- **Telematics unit.** A clock off by a constant skew plus per-sample jitter, and connectivity
  gaps: readings taken during a gap are buffered and sent in a burst when the link returns,
  with their original `ts` (late data).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final

from telemetry.domain.readings import canonical_ts

# ------------------------------------------------------------------ signals (COVESA VSS)

SPEED: Final = "Vehicle.Speed"  # km/h
IS_MOVING: Final = "Vehicle.IsMoving"
ODOMETER: Final = "Vehicle.TraveledDistance"  # m, uint32
ACCELERATION: Final = "Vehicle.Acceleration.Longitudinal"  # m/s^2
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"
HEADING: Final = "Vehicle.CurrentLocation.Heading"  # degrees, 0 = north, 90 = east
LV_VOLTAGE: Final = "Vehicle.LowVoltageBattery.CurrentVoltage"  # V
GEAR: Final = "Vehicle.Powertrain.Transmission.CurrentGear"  # 0 = neutral, int8
ENGINE_SPEED: Final = "Vehicle.Powertrain.CombustionEngine.Speed"  # rpm
COOLANT: Final = "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"  # deg C
FUEL: Final = "Vehicle.Powertrain.FuelSystem.AbsoluteLevel"  # l
SOC: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # percent
BATTERY_POWER: Final = "Vehicle.Powertrain.TractionBattery.CurrentPower"  # W, > 0 charging

_COMMON: Final = (SPEED, IS_MOVING, ODOMETER, ACCELERATION, LATITUDE, LONGITUDE, HEADING,
                  LV_VOLTAGE)
COMBUSTION_SIGNALS: Final = frozenset((*_COMMON, GEAR, ENGINE_SPEED, COOLANT, FUEL))
ELECTRIC_SIGNALS: Final = frozenset((*_COMMON, SOC, BATTERY_POWER))
# The Python type of each signal's values: VSS integer types go out as ints, float and double
# as floats, boolean as bools.
SIGNAL_TYPES: Final[dict[str, type]] = {
    **dict.fromkeys(COMBUSTION_SIGNALS | ELECTRIC_SIGNALS, float),
    IS_MOVING: bool,
    ODOMETER: int,
    GEAR: int,
}

# ------------------------------------------------------------------ physics

MAX_ACCEL: Final = 3.0  # m/s^2: a brisk launch; falls with speed (see _accel_limit)
MAX_BRAKE: Final = 4.0  # m/s^2: firm braking; an emergency stop (~9) is not modelled
MAX_SUBSTEP: Final = 0.5  # s: the model integrates in steps no longer than this
# Without a floor, speed would approach a stop (or a target) exponentially and never reach it.
_MIN_ACCEL: Final = 0.3
_G: Final = 9.81
_AIR_DENSITY: Final = 1.2
_ROLLING: Final = 0.011
_FUEL_J_PER_L: Final = 34.2e6  # petrol
_ENGINE_EFFICIENCY: Final = 0.3
_IDLE_FUEL_L_PER_S: Final = 0.8 / 3600
_MOTOR_EFFICIENCY: Final = 0.9
_OPERATING_TEMP: Final = 88.0  # deg C, thermostat open; a little more under load
_METRES_PER_DEG_LAT: Final = 111_320.0
_HOME_RADIUS_M: Final = 20_000.0  # a fleet works around its depot


class Phase(Enum):
    IDLE = "idle"
    URBAN = "urban"
    HIGHWAY = "highway"


@dataclass(frozen=True)
class _PhaseSpec:
    duration_s: tuple[float, float]
    speed_kmh: tuple[float, float]
    hold_s: tuple[float, float]  # how long one target speed holds
    stop_p: float  # chance that the next target is a stop (a light, a junction)
    stop_s: tuple[float, float]
    response_s: float  # time constant of the driver closing in on the target
    brake: float  # m/s^2 the driver uses to slow down in this phase


_PHASES: Final = {
    Phase.IDLE: _PhaseSpec((20, 120), (0, 0), (1e9, 1e9), 0.0, (0, 0), 3.0, 2.5),
    Phase.URBAN: _PhaseSpec((120, 600), (25, 55), (8, 30), 0.3, (8, 40), 3.0, 2.5),
    Phase.HIGHWAY: _PhaseSpec((300, 1200), (90, 130), (20, 90), 0.0, (0, 0), 8.0, 1.5),
}
_NEXT: Final = {
    Phase.IDLE: ((Phase.URBAN, 1.0),),
    Phase.URBAN: ((Phase.HIGHWAY, 0.35), (Phase.IDLE, 0.2), (Phase.URBAN, 0.45)),
    Phase.HIGHWAY: ((Phase.URBAN, 1.0),),
}

# (name, latitude, longitude): where vehicles start and around which they drive.
DEPOTS: Final = (
    ("Munich", 48.137, 11.575),
    ("Gothenburg", 57.709, 11.974),
    ("Lyon", 45.764, 4.836),
    ("Detroit", 42.331, -83.046),
    ("Nagoya", 35.181, 136.906),
)


def _accel_limit(speed: float) -> float:
    """What the engine can give: less at speed, where power, not grip, limits."""
    return MAX_ACCEL * max(0.25, 1.0 - speed / 50.0)


@dataclass(frozen=True)
class Gearbox:
    """A 6-speed automatic of a mid-size car."""

    ratios: tuple[float, ...] = (4.17, 2.34, 1.52, 1.14, 0.87, 0.69)
    final_drive: float = 3.6
    wheel_radius_m: float = 0.32
    idle_rpm: float = 750.0
    upshift_rpm: float = 2300.0
    # Below upshift_rpm x the largest ratio step (0.56), so an upshift never lands under it and
    # the box does not hunt between two gears.
    downshift_rpm: float = 1200.0
    redline_rpm: float = 6000.0

    @property
    def top(self) -> int:
        return len(self.ratios)

    def _geared_rpm(self, speed: float, gear: int) -> float:
        wheel_rpm = speed / (2 * math.pi * self.wheel_radius_m) * 60.0
        return wheel_rpm * self.ratios[gear - 1] * self.final_drive

    def engine_rpm(self, speed: float, gear: int) -> float:
        """Engine speed in `gear` (0 = neutral) at `speed` m/s."""
        if gear <= 0:
            return self.idle_rpm
        return max(self.idle_rpm, self._geared_rpm(speed, gear))

    def select(self, speed: float, gear: int) -> int:
        """The gear after shifting from `gear` at `speed`, with hysteresis."""
        g = min(max(gear, 1), self.top)
        while g < self.top and self._geared_rpm(speed, g) > self.upshift_rpm:
            g += 1
        while g > 1 and self._geared_rpm(speed, g) < self.downshift_rpm:
            g -= 1
        return g


@dataclass
class VehicleState:
    """What a vehicle is doing now; readings are taken from it."""

    t: float  # s since the fleet's start, on the true clock
    phase: Phase
    speed: float  # m/s
    accel: float  # m/s^2 over the last integration step
    odometer: float  # m
    x: float  # m east of the depot
    y: float  # m north of the depot
    heading: float  # degrees
    gear: int = 0
    rpm: float = 0.0
    coolant: float = 0.0
    fuel_l: float = 0.0
    soc: float = 0.0
    battery_power_w: float = 0.0


class _Route:
    """A polyline in metres east/north of the depot, extended as the vehicle drives on."""

    def __init__(self, rng: random.Random, x: float, y: float, bearing: float) -> None:
        self.rng = rng
        self.ax, self.ay = x, y
        self.bearing = bearing % 360.0
        self.length = 1.0
        self.done = 0.0
        self._next_waypoint(Phase.URBAN)

    def _next_waypoint(self, phase: Phase) -> None:
        rng = self.rng
        if math.hypot(self.ax, self.ay) > _HOME_RADIUS_M:
            home = math.degrees(math.atan2(-self.ax, -self.ay))
            bearing = home + rng.uniform(-30.0, 30.0)
            length = rng.uniform(300.0, 2000.0)
        elif phase is Phase.HIGHWAY:
            bearing = self.bearing + rng.gauss(0.0, 8.0)
            length = rng.uniform(800.0, 4000.0)
        else:
            turn = rng.choice((-90.0, 90.0)) if rng.random() < 0.35 else 0.0
            bearing = self.bearing + turn + rng.gauss(0.0, 12.0)
            length = rng.uniform(80.0, 400.0)
        self.bearing = bearing % 360.0
        self.length = length
        self.done = 0.0

    def advance(self, distance: float, phase: Phase) -> None:
        while self.done + distance >= self.length:
            distance -= self.length - self.done
            self.ax, self.ay = self._end()
            self._next_waypoint(phase)
        self.done += distance

    def _end(self) -> tuple[float, float]:
        rad = math.radians(self.bearing)
        return self.ax + self.length * math.sin(rad), self.ay + self.length * math.cos(rad)

    def position(self) -> tuple[float, float]:
        rad = math.radians(self.bearing)
        return self.ax + self.done * math.sin(rad), self.ay + self.done * math.cos(rad)


class SimVehicle:
    """One vehicle's drive cycle and powertrain, integrated in steps of at most MAX_SUBSTEP."""

    def __init__(self, vehicle_id: str, rng: random.Random, *, electric: bool) -> None:
        self.id = vehicle_id
        self.rng = rng
        # Sensor noise draws from its own generator, so how often readings are taken does not
        # change how the vehicle drives.
        self.noise = random.Random(rng.getrandbits(64))
        self.electric = electric
        self.gearbox = Gearbox()
        _, self.lat0, self.lon0 = rng.choice(DEPOTS)
        self.ambient = rng.uniform(-5.0, 30.0)
        self.mass = rng.uniform(1700.0, 2200.0) if electric else rng.uniform(1300.0, 1800.0)
        self.drag_area = rng.uniform(0.5, 0.6) if electric else rng.uniform(0.6, 0.75)
        self.capacity_kwh = rng.uniform(50.0, 85.0)
        self.aux_w = 300.0 + 80.0 * abs(self.ambient - 21.0)  # electronics plus heating/cooling
        x, y = rng.uniform(-3000.0, 3000.0), rng.uniform(-3000.0, 3000.0)
        self.route = _Route(rng, x, y, rng.uniform(0.0, 360.0))
        # Most of a fleet is on the road at any moment; the rest has just been started.
        cold_start = rng.random() < 0.35
        phase = Phase.IDLE if cold_start else rng.choice((Phase.URBAN, Phase.HIGHWAY))
        self.state = VehicleState(
            t=0.0, phase=phase, speed=0.0, accel=0.0,
            odometer=rng.uniform(5e6, 2e8), x=x, y=y, heading=self.route.bearing,
            coolant=self.ambient if cold_start else _OPERATING_TEMP,
            fuel_l=rng.uniform(10.0, 55.0), soc=rng.uniform(40.0, 95.0),
        )
        self.phase_left = rng.uniform(10.0, 45.0) if cold_start else self._duration(phase)
        self.target = 0.0
        self.hold_left = 0.0
        self._new_target()
        if not cold_start:
            self.state.speed = self.target  # mid-trip: already cruising
        self._update_powertrain(0.0, 0.0)

    def _duration(self, phase: Phase) -> float:
        return self.rng.uniform(*_PHASES[phase].duration_s)

    def _new_target(self) -> None:
        spec = _PHASES[self.state.phase]
        if self.state.phase is Phase.IDLE:
            self.target, self.hold_left = 0.0, math.inf
        elif self.rng.random() < spec.stop_p:
            self.target, self.hold_left = 0.0, self.rng.uniform(*spec.stop_s)
        else:
            self.target = self.rng.uniform(*spec.speed_kmh) / 3.6
            self.hold_left = self.rng.uniform(*spec.hold_s)

    def _next_phase(self) -> None:
        r, acc = self.rng.random(), 0.0
        nxt = self.state.phase
        for phase, p in _NEXT[self.state.phase]:
            acc += p
            if r < acc:
                nxt = phase
                break
        self.state.phase = nxt
        self.phase_left = self._duration(nxt)
        self._new_target()

    def advance(self, dt: float) -> None:
        """Move the vehicle on by `dt` seconds."""
        n = max(1, math.ceil(dt / MAX_SUBSTEP - 1e-9))
        for _ in range(n):
            self._step(dt / n)

    def _step(self, h: float) -> None:
        s = self.state
        s.t += h
        self.phase_left -= h
        if self.phase_left <= 0:
            self._next_phase()
        self.hold_left -= h
        if self.hold_left <= 0:
            self._new_target()
        spec = _PHASES[s.phase]
        v0 = s.speed
        diff = self.target - v0
        a = diff / spec.response_s
        a = min(a, _accel_limit(v0)) if a > 0 else max(a, -spec.brake)
        if diff and abs(a) < _MIN_ACCEL:
            a = math.copysign(_MIN_ACCEL, diff)
        v1 = self.target if abs(a * h) >= abs(diff) else v0 + a * h
        v1 = max(0.0, v1)
        s.speed = v1
        s.accel = (v1 - v0) / h
        distance = (v0 + v1) / 2 * h
        s.odometer += distance
        self.route.advance(distance, s.phase)
        s.x, s.y = self.route.position()
        s.heading = self.route.bearing
        v = (v0 + v1) / 2
        resistance = _ROLLING * self.mass * _G + 0.5 * _AIR_DENSITY * self.drag_area * v * v
        power = max(0.0, (self.mass * s.accel + resistance) * v) if v > 0 else 0.0
        self._update_powertrain(h, power)

    def _update_powertrain(self, h: float, power_w: float) -> None:
        s = self.state
        if self.electric:
            drawn = power_w / _MOTOR_EFFICIENCY + self.aux_w
            s.soc = max(0.0, s.soc - drawn * h / (self.capacity_kwh * 3.6e6) * 100.0)
            s.battery_power_w = -drawn
            return
        parked = s.speed == 0.0 and s.phase is Phase.IDLE
        s.gear = 0 if parked else self.gearbox.select(s.speed, s.gear)
        s.rpm = self.gearbox.engine_rpm(s.speed, s.gear)
        load = min(1.0, power_w / 60_000.0)
        # Exponential approach to the thermostat's temperature: ~7 min from cold to 80 deg C
        # when driving, about twice that idling.
        tau = 180.0 if s.speed > 0 else 420.0
        target = _OPERATING_TEMP + 6.0 * load
        s.coolant += (target - s.coolant) * (1.0 - math.exp(-h / tau))
        fuel = (power_w / _ENGINE_EFFICIENCY / _FUEL_J_PER_L + _IDLE_FUEL_L_PER_S) * h
        s.fuel_l = max(0.0, s.fuel_l - fuel)

    def signals(self) -> dict[str, Any]:
        """The signals of a reading taken now, rounded as a vehicle bus would carry them."""
        s = self.state
        lat = self.lat0 + s.y / _METRES_PER_DEG_LAT
        lon = self.lon0 + s.x / (_METRES_PER_DEG_LAT * math.cos(math.radians(self.lat0)))
        out: dict[str, Any] = {
            SPEED: round(s.speed * 3.6, 2),
            IS_MOVING: s.speed > 0.0,
            ODOMETER: int(s.odometer),
            ACCELERATION: round(s.accel, 2),
            LATITUDE: round(lat, 7),
            LONGITUDE: round(lon, 7),
            HEADING: round(s.heading, 1) % 360.0,
        }
        if self.electric:
            out[LV_VOLTAGE] = round(14.0 + self.noise.gauss(0.0, 0.03), 2)  # DC-DC converter
            out[SOC] = round(s.soc, 3)
            out[BATTERY_POWER] = float(round(s.battery_power_w))
        else:
            out[LV_VOLTAGE] = round(14.2 + self.noise.gauss(0.0, 0.05), 2)  # alternator
            out[GEAR] = s.gear
            out[ENGINE_SPEED] = float(round(s.rpm))
            out[COOLANT] = round(s.coolant, 1)
            out[FUEL] = round(s.fuel_l, 2)
        return out


# ------------------------------------------------------------------ telematics

# The service refuses readings more than 300 s (its default clock skew) ahead; stay well inside.
_MAX_SKEW_S: Final = 240.0


class _Unit:
    """The vehicle's telematics unit: its clock, and its link to the ingest service."""

    def __init__(self, clock_rng: random.Random, link_rng: random.Random,
                 config: FleetConfig) -> None:
        self.clock_rng = clock_rng
        self.link_rng = link_rng
        cap = min(5 * config.clock_skew_s, _MAX_SKEW_S)
        self.skew = max(-cap, min(cap, clock_rng.gauss(0.0, config.clock_skew_s)))
        self.jitter = config.jitter_s
        self.gap_rate = config.gaps_per_hour / 3600.0
        self.gap_s = config.gap_s
        self.offline_left = 0.0
        self.outbox: list[tuple[float, dict[str, Any]]] = []

    def ts(self, t: float, dt: float) -> float:
        # Jitter under half a period keeps one vehicle's timestamps in order.
        j = min(self.jitter, 0.4 * dt)
        return t + self.skew + (self.clock_rng.uniform(-j, j) if j > 0 else 0.0)

    def route(self, t: float, reading: dict[str, Any], dt: float) -> list[tuple[float, Any]]:
        """What goes out now: nothing during a gap; the backlog, then `reading`, after one."""
        if self.offline_left > 0:
            self.outbox.append((t, reading))
            self.offline_left -= dt
            return []
        out = [*self.outbox, (t, reading)]
        self.outbox = []
        if self.gap_rate > 0 and self.link_rng.random() < 1.0 - math.exp(-dt * self.gap_rate):
            self.offline_left = self.link_rng.uniform(*self.gap_s)
        return out


@dataclass(frozen=True)
class FleetConfig:
    vehicles: int = 10
    prefix: str = "veh"
    electric_share: float = 0.3  # the rest are combustion
    clock_skew_s: float = 2.0  # standard deviation of a vehicle's constant clock offset
    jitter_s: float = 0.02  # per-sample clock noise, +-
    gaps_per_hour: float = 30.0  # connectivity gaps per vehicle and hour of driving
    gap_s: tuple[float, float] = (2.0, 20.0)  # how long a gap lasts

    def __post_init__(self) -> None:
        if self.vehicles < 1:
            raise ValueError("vehicles must be >= 1")
        if not 0.0 <= self.electric_share <= 1.0:
            raise ValueError("electric_share must be within 0..1")
        if min(self.clock_skew_s, self.jitter_s, self.gaps_per_hour) < 0:
            raise ValueError("clock_skew_s, jitter_s and gaps_per_hour must be >= 0")
        if not 0 < self.gap_s[0] <= self.gap_s[1]:
            raise ValueError("gap_s must be (min, max) with 0 < min <= max")


@dataclass
class FleetStats:
    generated: int = 0  # readings taken
    delivered: int = 0  # readings handed out by tick() and flush()
    late: int = 0  # of those, delivered after a gap
    bursts: int = 0  # backlogs delivered at once when a link came back
    max_late_s: float = 0.0


class Fleet:
    """The vehicles and their telematics units on one clock.

    `tick(dt)` takes a reading of every vehicle at the current instant, returns what the units
    deliver now (late readings from a gap included), then moves every vehicle on by `dt`.
    `flush()` hands out what is still buffered, as when every link comes back at the end.
    """

    def __init__(self, config: FleetConfig, rng: random.Random, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must carry a UTC offset")
        self.config = config
        self.start = start
        self.t = 0.0
        self.stats = FleetStats()
        self.vehicles: list[SimVehicle] = []
        self.units: list[_Unit] = []
        for i in range(config.vehicles):
            drive = random.Random(rng.getrandbits(64))
            clock = random.Random(rng.getrandbits(64))
            link = random.Random(rng.getrandbits(64))
            electric = drive.random() < config.electric_share
            self.vehicles.append(SimVehicle(f"{config.prefix}-{i:04d}", drive, electric=electric))
            self.units.append(_Unit(clock, link, config))

    @property
    def offline(self) -> int:
        return sum(1 for u in self.units if u.offline_left > 0)

    def _reading(self, vehicle: SimVehicle, unit: _Unit, dt: float) -> dict[str, Any]:
        ts = self.start + timedelta(seconds=unit.ts(self.t, dt))
        return {"vehicle_id": vehicle.id, "ts": canonical_ts(ts), "signals": vehicle.signals()}

    def tick(self, dt: float) -> list[dict[str, Any]]:
        if not dt > 0:
            raise ValueError("dt must be > 0")
        out: list[dict[str, Any]] = []
        for vehicle, unit in zip(self.vehicles, self.units, strict=True):
            self.stats.generated += 1
            delivered = unit.route(self.t, self._reading(vehicle, unit, dt), dt)
            self._count(delivered)
            out.extend(r for _, r in delivered)
            vehicle.advance(dt)
        self.t += dt
        return out

    def flush(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for unit in self.units:
            backlog, unit.outbox, unit.offline_left = unit.outbox, [], 0.0
            self._count(backlog)
            out.extend(r for _, r in backlog)
        return out

    def _count(self, delivered: list[tuple[float, Any]]) -> None:
        self.stats.delivered += len(delivered)
        late = [self.t - t for t, _ in delivered if t < self.t]
        if late:
            self.stats.late += len(late)
            self.stats.bursts += 1
            self.stats.max_late_s = max(self.stats.max_late_s, *late)

    def run(self, duration: float, rate: float) -> list[dict[str, Any]]:
        """Every reading of `duration` seconds at `rate` Hz, in delivery order (no pacing)."""
        out: list[dict[str, Any]] = []
        for _ in range(ticks(duration, rate)):
            out.extend(self.tick(1.0 / rate))
        out.extend(self.flush())
        return out


def ticks(duration: float, rate: float) -> int:
    return max(1, round(duration * rate))
