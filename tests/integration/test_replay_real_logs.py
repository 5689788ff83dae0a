"""The sample real-vehicle logs through the replay decoder, and the shipped maps against VSS.

Data: the package's `src/telemetry/samples/` (its README describes each file). Each log is
decoded once per module.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import CAN, MAPS, VSS_CSV

pytest.importorskip("can", reason="the CAN extras (python-can, cantools) are not installed")
pytest.importorskip("cantools", reason="the CAN extras (python-can, cantools) are not installed")

import msgspec

from telemetry.adapters.canlog import (
    OBD2_MESSAGE,
    OBD2_PIDS,
    DecodeStats,
    FrameDecoder,
    SignalMap,
    TimedReading,
    load_dbc,
    read_frames,
    replay_readings,
)
from telemetry.adapters.ingest_client import ClientSummary
from telemetry.domain.readings import Reading
from telemetry.entrypoints.replay import replay

CAR = {"dbc": CAN / "canmod-gps.dbc", "log": CAN / "css-car-gnss-obd2.candump.log.gz",
       "map": MAPS / "css-car-gnss-obd2.yaml"}
TRUCK = {"dbc": CAN / "css-j1939-demo.dbc", "log": CAN / "css-truck-j1939.candump.log.gz",
         "map": MAPS / "css-truck-j1939.yaml"}
TRUCK_MF4 = {**TRUCK, "log": CAN / "css-truck-j1939.mf4"}
KONA = {"dbc": CAN / "css-uds-kona-ev.dbc", "log": CAN / "css-kona-ev-uds.mf4",
        "map": MAPS / "css-kona-ev-uds.yaml"}
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
OUTDOOR = "Vehicle.Exterior.AirTemperature"

SPEED = "Vehicle.Speed"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
COOLANT = "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"


@dataclass
class Decoded:
    readings: list[TimedReading]
    stats: DecodeStats
    seconds: float

    def series(self, name: str) -> list[tuple[float, Any]]:
        return [(t, r["signals"][name]) for t, r in self.readings if name in r["signals"]]


def _decode(spec: dict[str, Path]) -> Decoded:
    dec = FrameDecoder.from_files(spec["dbc"], map_path=spec["map"])
    start = time.perf_counter()
    out = list(replay_readings(spec["log"], dec, "veh-1"))
    return Decoded(out, dec.stats, time.perf_counter() - start)


@pytest.fixture(scope="module")
def car() -> Decoded:
    return _decode(CAR)


@pytest.fixture(scope="module")
def truck() -> Decoded:
    return _decode(TRUCK)


# ------------------------------------------------------------------ the car: GNSS + OBD2


def test_car_frames_decoded_and_skipped(car: Decoded) -> None:
    s = car.stats
    # 8 GNSS messages at 1 Hz, the IMU at 100 Hz, 7,267 OBD2 replies; the one unknown id is the
    # logger's own 0x17F00010 status frame at 2 Hz.
    assert (s.frames, s.decoded, s.readings, s.obd2) == (73785, 72585, 72585, 7267)
    assert (s.unknown, s.decode_errors, s.obd2_unsupported, s.no_signals) == (1200, 0, 0, 0)
    assert s.unknown_ids == {"0x17F00010": 1200}
    assert s.dropped == {}
    assert s.frames == (s.decoded + s.unknown + s.decode_errors + s.obd2_unsupported
                        + s.no_signals + s.non_data + s.bad_ts)


def test_car_gnss_speed_agrees_with_obd2_speed(car: Decoded) -> None:
    """The data README's cross-check: median difference 0.6 km/h, paired by nearest time."""
    obd = car.series(SPEED)
    gnss = [(t, v * 3.6) for t, v in car.series("gnss_speed.Speed")]  # m/s, left unmapped
    assert len(obd) > 1000 and len(gnss) > 500
    times = [t for t, _ in obd]
    diffs = []
    for t, v in gnss:
        i = bisect.bisect_left(times, t)
        j = min((k for k in (i - 1, i) if 0 <= k < len(obd)), key=lambda k: abs(times[k] - t))
        diffs.append(abs(obd[j][1] - v))
    assert statistics.median(diffs) < 1.0
    assert max(v for _, v in obd) > 50  # a drive, not a parked car


def test_car_obd2_engine_speed_and_coolant(car: Decoded) -> None:
    rpm = [v for _, v in car.series(RPM)]
    coolant = [v for _, v in car.series(COOLANT)]
    assert len(rpm) == 1204 and len(coolant) == 600
    assert 700 < statistics.median(rpm) < 4000
    assert all(-40 <= c <= 130 for c in coolant)


def test_car_gnss_position_and_fix_type(car: Decoded) -> None:
    lat = [v for _, v in car.series("Vehicle.CurrentLocation.Latitude")]
    lon = [v for _, v in car.series("Vehicle.CurrentLocation.Longitude")]
    assert len(lat) == len(lon) == 571
    assert all(-90 <= x <= 90 for x in lat) and all(-180 <= x <= 180 for x in lon)
    assert max(lat) - min(lat) > 0.001  # it moves
    fix = Counter(v for _, v in car.series("Vehicle.CurrentLocation.GNSSReceiver.FixType"))
    assert set(fix) <= {"NONE", "TWO_D", "THREE_D"} and fix["THREE_D"] > 0


def test_car_readings_follow_the_contract(car: Decoded) -> None:
    body = msgspec.json.encode([r for _, r in car.readings])
    readings = msgspec.json.decode(body, type=list[Reading])  # section 2's static rules
    assert all(r.ts >= datetime(2021, 7, 26, tzinfo=UTC) for r in readings[:10])
    assert [t for t, _ in car.readings] == sorted(t for t, _ in car.readings)


# ------------------------------------------------------------------ the truck: J1939


def test_truck_frames_decoded_and_skipped(truck: Decoded) -> None:
    s = truck.stats
    # EEC1 12,719 + CCVS1 1,272 frames, and 127 DM1 messages of 4 DTCs each (by BAM).
    assert (s.frames, s.decoded, s.readings, s.unknown, s.decode_errors, s.obd2, s.dm1) == (
        57849, 14118, 14499, 43200, 0, 0, 127)
    assert s.unknown_ids["0x009"] == 11358  # 11-bit frames from another module
    # BAMs: 127 DM1 (3 packets) and 25 EC1 (PGN 0xFEE3, 6 packets, not in the DBC); none broken.
    assert (s.transport_frames, s.reassembled) == (127 * 4 + 25 * 7, 152)
    assert s.unknown_ids["0x1CFEE300 (J1939 TP)"] == 25
    assert s.transfers_dropped == {} and s.stray_frames == 0
    assert s.frames - s.transport_frames + s.reassembled == (
        s.decoded + s.unknown + s.decode_errors + s.obd2_unsupported + s.no_signals
        + s.non_data + s.bad_ts)


def test_truck_active_dtcs_from_dm1(truck: Decoded) -> None:
    dtcs = Counter((r["signals"]["J1939.DM1.SourceAddress"], r["signals"]["J1939.DM1.SPN"],
                    r["signals"]["J1939.DM1.FMI"]) for _, r in truck.readings
                   if "J1939.DM1.SPN" in r["signals"])
    # The engine (source 0x00) reports the same four codes every second, the MIL on.
    assert dtcs == {(0, 980, 9): 127, (0, 3216, 20): 127, (0, 609, 9): 127, (0, 609, 12): 127}
    lamps = {r["signals"]["J1939.DM1.MalfunctionIndicatorLamp"] for _, r in truck.readings
             if "J1939.DM1.SPN" in r["signals"]}
    assert lamps == {"On"}


def test_truck_idles_at_650_rpm_and_stands_still(truck: Decoded) -> None:
    rpm = [v for _, v in truck.series(RPM)]
    speed = [v for _, v in truck.series(SPEED)]
    assert len(rpm) == 12719  # EEC1 at 100 Hz
    assert len(speed) == 1272  # CCVS1 at 10 Hz
    assert 600 <= statistics.median(rpm) <= 700
    assert set(speed) == {0.0}


def test_j1939_pgn_matching_ignores_priority_and_source_address() -> None:
    # The DBC defines CCVS1 as 0x18FEF1FE (priority 6, SA 0xFE); the truck sends 0x0CFEF100
    # (priority 3, SA 0x00). Exact-id matching finds nothing; PGN matching finds every frame.
    db = load_dbc(TRUCK["dbc"])
    assert {m.name: m.frame_id for m in db.messages}["CCVS1"] == 0x18FEF1FE
    by_pgn, exact = FrameDecoder(db), FrameDecoder(db, pgn_match=False)
    for msg in itertools.islice(read_frames(TRUCK["log"]), 5000):  # the first 11 s
        by_pgn.decode(msg)
        exact.decode(msg)
    assert by_pgn.stats.decoded > 1000 and exact.stats.decoded == 0
    s = by_pgn.stats
    assert s.unknown + s.decoded + s.transport_frames - s.reassembled == 5000
    assert exact.stats.unknown == 5000


# ------------------------------------------------------------------ the MF4 files


def test_truck_mf4_every_eec1_and_ccvs1_frame_as_cantools_decodes_it() -> None:
    pytest.importorskip("asammdf", reason="the CAN extras (asammdf) are not installed")
    db = load_dbc(TRUCK_MF4["dbc"])
    by_pgn = {m.frame_id & 0x03FFFF00: m for m in db.messages}
    names = {"EEC1.EngineSpeed": RPM, "CCVS1.WheelBasedVehicleSpeed": SPEED}
    expected = []
    for msg in read_frames(TRUCK_MF4["log"]):  # the logger's file: unfinalized, `UnFinMF`
        m = by_pgn.get(msg.arbitration_id & 0x03FFFF00)
        if m is not None:
            values = m.decode(bytes(msg.data))
            expected.append((msg.timestamp, {names[f"{m.name}.{k}"]: v
                                             for k, v in values.items()}))
    assert Counter(next(iter(v)) for _, v in expected) == {RPM: 577, SPEED: 184}
    got = _decode(TRUCK_MF4)
    assert [(t, r["signals"]) for t, r in got.readings] == expected
    s = got.stats
    assert (s.frames, s.decoded, s.transport_frames, s.reassembled) == (1815, 761, 80, 16)
    assert s.transfers_dropped == {}  # 16 BAMs (EC1, VI), whole, not in the DBC


def _complete_replies(log: Path) -> dict[int, list[float]]:
    """When each complete ISO-TP reply of the log ended, per id: counted here by hand."""
    done: dict[int, list[float]] = {}
    need: dict[int, tuple[int, int]] = {}  # id -> (bytes still due, next sequence number)
    for msg in read_frames(log):
        d, arb = bytes(msg.data), msg.arbitration_id
        if d[0] >> 4 == 1:
            need[arb] = (((d[0] & 0xF) << 8 | d[1]) - 6, 1)
        elif d[0] >> 4 == 2 and arb in need:
            left, sn = need.pop(arb)
            if d[0] & 0xF == sn:
                if left <= 7:
                    done.setdefault(arb, []).append(msg.timestamp)
                else:
                    need[arb] = (left - 7, (sn + 1) & 0xF)
    return done


def test_kona_state_of_charge_and_outdoor_temperature_from_every_complete_reply() -> None:
    pytest.importorskip("asammdf", reason="the CAN extras (asammdf) are not installed")
    kona = _decode(KONA)
    complete = _complete_replies(KONA["log"])
    assert {k: len(v) for k, v in complete.items()} == {0x7EC: 120, 0x7BB: 150}
    # One reading per complete reply, timed by its last frame, holding the value.
    assert kona.series(SOC) == [(t, 50.0) for t in complete[0x7EC]]
    assert kona.series(OUTDOOR) == [(t, 7.0) for t in complete[0x7BB]]
    assert len(kona.readings) == 270
    s = kona.stats
    assert (s.frames, s.transport_frames, s.reassembled, s.decoded) == (2010, 2010, 270, 270)
    # 30 first frames on 0x7EC with no consecutive frame after them (timed out when the next
    # reply began, 2 s later); the last one ends the log.
    assert s.transfers_dropped == {"timeout": 29, "incomplete": 1}
    assert s.dropped == {"unmapped_signal": 540}  # the `service` and `response` multiplexers


# ------------------------------------------------------------------ maps against VSS


@pytest.fixture(scope="module")
def vss() -> dict[str, dict[str, str]]:
    with gzip.open(VSS_CSV, "rt", encoding="utf-8") as f:
        return {row["Signal"]: row for row in csv.DictReader(io.StringIO(f.read()))}


@pytest.mark.parametrize("map_file", sorted(MAPS.glob("*.yaml")) + sorted(MAPS.glob("*.json")),
                         ids=lambda p: p.name)
def test_map_targets_are_vss_signals(map_file: Path, vss: dict[str, dict[str, str]]) -> None:
    m = SignalMap.load(map_file)
    assert m.targets()
    for name in m.targets():
        assert name in vss, f"{map_file.name}: {name} is not in the VSS catalogue"
        assert vss[name]["Type"] in ("sensor", "actuator", "attribute"), name  # not a branch


@pytest.mark.parametrize("spec", [CAR, TRUCK, KONA], ids=["car", "truck", "kona"])
def test_map_sources_exist_in_the_dbc_or_the_obd2_decoder(spec: dict[str, Path]) -> None:
    known = {f"{m.name}.{s.name}" for m in load_dbc(spec["dbc"]).messages for s in m.signals}
    known |= {f"{OBD2_MESSAGE}.{p.name}" for p in OBD2_PIDS.values()}
    for source in SignalMap.load(spec["map"]).entries:
        assert source in known, f"{spec['map'].name}: {source} decodes from nothing"


def test_maps_send_units_vss_expects(car: Decoded, vss: dict[str, dict[str, str]]) -> None:
    assert vss[SPEED]["Unit"] == "km/h" and vss[RPM]["Unit"] == "rpm"
    assert vss["Vehicle.Exterior.AirPressure"]["Unit"] == "hPa"
    pressure = [v for _, v in car.series("Vehicle.Exterior.AirPressure")]
    assert pressure and all(800 <= p <= 1100 for p in pressure)  # kPa from OBD2, x10


# ------------------------------------------------------------------ the replay command


class FakeSender:
    def __init__(self) -> None:
        self.summary = ClientSummary()
        self.batches: list[list[dict[str, Any]]] = []

    def send(self, readings: list[dict[str, Any]]) -> list[str]:
        self.batches.append(readings)
        self.summary.sent += len(readings)
        self.summary.accepted += len(readings)
        return [str(i) for i in range(len(readings))]

    def close(self) -> None:
        pass


def test_replay_truck_now_in_batches() -> None:
    sender = FakeSender()
    before = datetime.now(UTC)
    r = replay(dbc=TRUCK["dbc"], log=TRUCK["log"], vehicle_id="truck-1",
               map_path=TRUCK["map"], time_mode="now", batch=500, client=sender)
    assert r.summary.accepted == r.stats.readings == 14499
    assert [len(b) for b in sender.batches] == [500] * 28 + [499]
    last = max(datetime.fromisoformat(x["ts"]) for b in sender.batches for x in b)
    first = min(datetime.fromisoformat(x["ts"]) for b in sender.batches for x in b)
    # The log ends now (its very last frame is an unknown id, 2 ms after the last reading).
    assert before - timedelta(seconds=1) <= last <= datetime.now(UTC)
    assert 126 < (last - first).total_seconds() < 128  # and keeps its 127 s
