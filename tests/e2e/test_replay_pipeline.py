"""Real CAN logs (and the simulated fleet's faults) through the whole pipeline:
`telemetry replay`/`simulate` -> serve -> worker -> lake -> `telemetry aggregate`, every stage a
process started as a user would.

One pipeline for the module (starting processes is most of the cost): the truck log in full, a
deterministic slice of the car log (`--limit`), the two loggers' MF4 files (the truck's J1939,
the Kona EV's UDS replies over ISO-TP), a tiny log with a relative clock replayed twice
(`--time now`, `--time <RFC 3339>`), and a simulated fleet with connectivity gaps and lost
responses, each under its own vehicle ids.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import CAN, MAPS

pytest.importorskip("can", reason="the CAN extras (python-can, cantools) are not installed")
pytest.importorskip("cantools", reason="the CAN extras (python-can, cantools) are not installed")

from telemetry.adapters.canlog import FrameDecoder, load_dbc, read_frames, replay_readings
from telemetry.adapters.ingest_client import ensure_reading_id
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.readings import derive_reading_id
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import load_settings
from tests.e2e.conftest import Pipeline

REPO = Path(__file__).resolve().parents[2]


pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TRUCK = {"dbc": CAN / "css-j1939-demo.dbc", "log": CAN / "css-truck-j1939.candump.log.gz",
         "map": MAPS / "css-truck-j1939.yaml"}
CAR = {"dbc": CAN / "canmod-gps.dbc", "log": CAN / "css-car-gnss-obd2.candump.log.gz",
       "map": MAPS / "css-car-gnss-obd2.yaml"}
TRUCK_MF4 = {**TRUCK, "log": CAN / "css-truck-j1939.mf4"}
KONA = {"dbc": CAN / "css-uds-kona-ev.dbc", "log": CAN / "css-kona-ev-uds.mf4",
        "map": MAPS / "css-kona-ev-uds.yaml"}
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
OUTDOOR = "Vehicle.Exterior.AirTemperature"
TRUCK_READINGS = 14499  # EEC1 12,719 + CCVS1 1,272 + 4 DTCs in each of 127 DM1 messages
DM1 = {"J1939.DM1.SourceAddress", "J1939.DM1.ActiveDTCs", "J1939.DM1.SPN", "J1939.DM1.FMI",
       "J1939.DM1.OccurrenceCount", "J1939.DM1.ConversionMethod"} | {
    f"J1939.DM1.{lamp}{flash}" for lamp in ("MalfunctionIndicatorLamp", "RedStopLamp",
                                            "AmberWarningLamp", "ProtectLamp")
    for flash in ("", "Flash")}
CAR_LIMIT = 20_000  # the first ~165 s of the drive; the whole log takes ~4x as long
SPEED = "Vehicle.Speed"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(ts: str) -> int:
    return (datetime.fromisoformat(ts) - EPOCH) // timedelta(microseconds=1)


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@dataclass
class Replayed:
    pipeline: Pipeline
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    aggregates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    car_start: datetime = EPOCH
    mf4_start: datetime = EPOCH  # the truck MF4's and the Kona's
    tiny_start: datetime = EPOCH
    tiny_now: tuple[datetime, datetime] = (EPOCH, EPOCH)  # before and after that replay

    def summary(self, name: str) -> dict[str, float]:
        """`key=value` pairs of the replay's summary lines (stdout)."""
        return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", self.runs[name].stdout)}


def _tiny_log(path: Path) -> Path:
    """EEC1 frames of a logger without a clock: seconds since it started, 100 Hz, 650-840 rpm."""
    lines = []
    for i in range(20):
        raw = int((650 + 10 * i) / 0.125)
        data = bytes([0xFF, 0xFF, 0xFF, raw & 0xFF, raw >> 8, 0xFF, 0xFF, 0xFF])
        lines.append(f"({12.5 + i * 0.01:.6f}) can0 0CF00400#{data.hex().upper()}\n")
    path.write_text("".join(lines))
    return path


def _replay(p: Pipeline, key: str, spec: dict[str, Path], vehicle: str,
            *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", "replay", "--dbc", str(spec["dbc"]),
         "--log", str(spec["log"]), "--map", str(spec["map"]), "--vehicle-id", vehicle,
         "--speed", "max", "--url", p.url, "--api-key", key, *extra],
        env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _simulate(p: Pipeline, key: str) -> subprocess.Popen[str]:
    # Many gaps and lost responses, no clock skew: late readings stand out by received - ts.
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", "simulate", "--url", p.url, "--api-key", key,
         "--prefix", "sim", "--vehicles", "5", "--rate", "5", "--duration", "4", "--batch", "10",
         "--seed", "3", "--gaps-per-hour", "3000", "--lost-responses", "0.5",
         "--clock-skew", "0"],
        env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _key(p: Pipeline, patterns: list[str]) -> str:
    """A key straight into the key store: `keys create` is tested elsewhere, and a process
    start is seconds here."""
    (p.data_dir / "data").mkdir(parents=True, exist_ok=True)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    store = create_container(load_settings(p.env)).api_keys()
    store.add(new_stored_key(key_id, secret, "e2e", patterns, datetime.now(UTC)))
    return format_key(key_id, secret)


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    tmp = tmp_path_factory.mktemp("replay-pipeline")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.update(TELEMETRY_DATA_DIR=str(tmp / "data"), TELEMETRY_BATCH_MAX_AGE="0.5",
               TELEMETRY_LOG_FORMAT="json")
    p = Pipeline(tmp, env)
    r = Replayed(p)
    try:
        key = _key(p, ["truck-*", "car-*", "tiny-*", "sim-*", "kona-*"])
        worker = p.start("worker", log_name="worker")  # starts up while serve does
        p.serve()
        # The truck alone, so its summary's rate is the pipeline's throughput.
        r.runs["truck"] = _finish(_replay(p, key, TRUCK, "truck-1", "--time", "now"))
        # Then the rest side by side (process start-up is most of their cost). The car gets a
        # fixed instant, so its readings (and content-hash ids) can be derived here exactly;
        # the log is 600 s long, so all of it stays in the past.
        r.car_start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15)
        r.mf4_start = r.car_start
        # a fixed instant two days back: within the service's maximum lateness
        r.tiny_start = (datetime.now(UTC) - timedelta(days=2)).replace(
            hour=3, minute=4, second=5, microsecond=250000)
        tiny = {**TRUCK, "log": _tiny_log(tmp / "relative.candump.log")}
        before = datetime.now(UTC)
        procs = {
            "car": _replay(p, key, CAR, "car-1", "--time", _rfc3339(r.car_start),
                           "--limit", str(CAR_LIMIT)),
            "tiny-now": _replay(p, key, tiny, "tiny-now", "--time", "now"),
            "tiny-at": _replay(p, key, tiny, "tiny-at", "--time", _rfc3339(r.tiny_start)),
            "sim": _simulate(p, key),
            "truck-mf4": _replay(p, key, TRUCK_MF4, "truck-mf4", "--time",
                                 _rfc3339(r.mf4_start)),
            "kona": _replay(p, key, KONA, "kona-1", "--time", _rfc3339(r.mf4_start)),
        }
        r.runs.update({name: _finish(proc) for name, proc in procs.items()})
        r.tiny_now = (before, datetime.now(UTC))

        # The running worker drains everything accepted (the replays' and simulator's `sent`:
        # resent batches are stored twice), then stops on SIGTERM with exit 0.
        lake = tmp / "data" / "lake"
        accepted = sum(int(r.summary(name)["sent"]) for name in r.runs)
        deadline = time.monotonic() + 60
        while _raw_lines(lake) < accepted and time.monotonic() < deadline:
            assert worker.poll() is None, p.log("worker")
            time.sleep(0.5)
        assert _raw_lines(lake) == accepted, p.log("worker")
        assert '"worker_started"' in p.log("worker")  # so SIGTERM meets its handler
        assert p.stop(worker) == 0, p.log("worker")
        agg = p.cli("aggregate")
        assert agg.returncode == 0, agg.stderr

        for f in sorted((lake / "raw").rglob("*.jsonl")):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                r.records.setdefault(rec["vehicle_id"], []).append(rec)
        for f in sorted((lake / "aggregates" / "hourly").rglob("vehicles.jsonl")):
            for line in f.read_text().splitlines():
                row = json.loads(line)
                r.aggregates.setdefault(row["vehicle_id"], []).append(row)
        yield r
    finally:
        for proc in p.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@functools.cache
def _truck() -> list[dict[str, Any]]:
    return _decoded(TRUCK, "truck-1")


def _raw_lines(lake: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in (lake / "raw").rglob("*.jsonl"))


def _decoded(spec: dict[str, Path], vehicle: str, time: Any = "original",
             limit: int | None = None) -> list[dict[str, Any]]:
    dec = FrameDecoder.from_files(spec["dbc"], map_path=spec["map"])
    out = []
    for _, reading in replay_readings(spec["log"], dec, vehicle, time):
        out.append(reading)
        if limit is not None and len(out) >= limit:
            break
    return out


def _stat(rows: list[dict[str, Any]], name: str) -> dict[str, float]:
    """One signal's statistics over every hour of a vehicle, merged."""
    parts = [row["signals"][name] for row in rows if name in row["signals"]]
    count = sum(p["count"] for p in parts)
    return {"count": count, "min": min(p["min"] for p in parts),
            "max": max(p["max"] for p in parts),
            "mean": sum(p["mean"] * p["count"] for p in parts) / count}


# ------------------------------------------------------------------ the truck: the whole log


def test_truck_log_replays_whole_into_the_lake_with_vss_names(replayed: Replayed) -> None:
    s = replayed.summary("truck")
    assert (s["frames"], s["decoded"], s["unknown"], s["decode_errors"]) == (57849, 14118,
                                                                              43200, 0)
    assert (s["transport_frames"], s["reassembled"], s["transfers_dropped"]) == (683, 152, 0)
    n = TRUCK_READINGS
    assert (s["readings"], s["sent"], s["accepted"], s["rejected"]) == (n, n, n, 0)

    stored = replayed.records["truck-1"]
    expected = _truck()
    assert len(stored) == len(expected) == n
    assert len({r["reading_id"] for r in stored}) == n  # each reading once, none lost
    for rec in stored:  # the id the replayer derived is the content hash of what was stored
        ts = datetime.fromisoformat(rec["ts"])
        assert rec["reading_id"] == derive_reading_id(rec["vehicle_id"], ts, rec["signals"])
    assert {name for r in stored for name in r["signals"]} == {RPM, SPEED} | DM1

    # Frame by frame the same signals, every ts moved by one constant offset (`--time now`).
    def order(r: dict[str, Any]) -> tuple[int, str]:
        return _us(r["ts"]), json.dumps(r["signals"], sort_keys=True)

    got = sorted(stored, key=order)
    want = sorted(expected, key=order)
    assert [g["signals"] for g in got] == [w["signals"] for w in want]
    shifts = {_us(g["ts"]) - _us(w["ts"]) for g, w in zip(got, want, strict=True)}
    assert max(shifts) - min(shifts) <= 1  # microsecond rounding
    # ...and the log ends about now (when the replay ran), not in 2021.
    last = datetime.fromisoformat(got[-1]["ts"])
    assert abs(last - datetime.now(UTC)) < timedelta(minutes=5)


def test_truck_aggregates_idle_engine_and_standstill(replayed: Replayed) -> None:
    rows = replayed.aggregates["truck-1"]
    assert sum(r["readings"] for r in rows) == TRUCK_READINGS  # counted once, in 1-2 hours
    rpm = _stat(rows, RPM)
    speed = _stat(rows, SPEED)
    expected = [r["signals"][RPM] for r in _truck() if RPM in r["signals"]]
    assert rpm["count"] == len(expected) == 12719
    assert rpm["mean"] == pytest.approx(statistics.fmean(expected), abs=1e-6)
    assert rpm["mean"] == pytest.approx(650, abs=10)  # a parked truck, idling
    assert speed["count"] == 1272
    assert speed["max"] == speed["min"] == 0


# ------------------------------------------------------------------ the MF4 files


def _shifted(spec: dict[str, Path], start: datetime) -> list[tuple[int, str]]:
    """(ts in us, signals) of what the log decodes to, shifted to `start`, in order."""
    return sorted((_us(r["ts"]), json.dumps(r["signals"], sort_keys=True))
                  for r in _decoded(spec, "x", start))


def _stored(replayed: Replayed, vehicle: str) -> list[tuple[int, str]]:
    return sorted((_us(r["ts"]), json.dumps(r["signals"], sort_keys=True))
                  for r in replayed.records[vehicle])


def test_truck_mf4_every_eec1_and_ccvs1_frame_stored_as_cantools_decodes_it(
    replayed: Replayed,
) -> None:
    db = load_dbc(TRUCK_MF4["dbc"])
    by_pgn = {m.frame_id & 0x03FFFF00: m for m in db.messages}
    names = {"EngineSpeed": RPM, "WheelBasedVehicleSpeed": SPEED}
    frames = list(read_frames(TRUCK_MF4["log"]))
    shift = _us(_rfc3339(replayed.mf4_start)) - round(frames[0].timestamp * 1e6)
    want = []
    for f in frames:
        m = by_pgn.get(f.arbitration_id & 0x03FFFF00)
        if m is not None:
            values = {names[k]: v for k, v in m.decode(bytes(f.data)).items()}
            want.append((round(f.timestamp * 1e6) + shift, json.dumps(values, sort_keys=True)))
    want.sort()
    got = _stored(replayed, "truck-mf4")
    assert len(got) == len(want) == 577 + 184
    assert [g[1] for g in got] == [w[1] for w in want]
    assert all(abs(g[0] - w[0]) <= 1 for g, w in zip(got, want, strict=True))
    s = replayed.summary("truck-mf4")
    assert (s["frames"], s["accepted"], s["reassembled"], s["transfers_dropped"]) == (
        1815, 761, 16, 0)


def test_kona_state_of_charge_and_outdoor_temperature_from_every_complete_reply(
    replayed: Replayed,
) -> None:
    stored = replayed.records["kona-1"]
    assert _stored(replayed, "kona-1") == _shifted(KONA, replayed.mf4_start)
    soc = [r["signals"][SOC] for r in stored if SOC in r["signals"]]
    outdoor = [r["signals"][OUTDOOR] for r in stored if OUTDOOR in r["signals"]]
    # 120 complete battery replies (30 more first frames got no consecutive frames), 150
    # climate replies: every one stored with its value.
    assert (soc, outdoor) == ([50.0] * 120, [7.0] * 150)
    rows = replayed.aggregates["kona-1"]
    assert sum(r["readings"] for r in rows) == 270
    assert _stat(rows, SOC) == {"count": 120, "min": 50.0, "max": 50.0, "mean": 50.0}
    assert _stat(rows, OUTDOOR) == {"count": 150, "min": 7.0, "max": 7.0, "mean": 7.0}
    s = replayed.summary("kona")
    assert (s["transport_frames"], s["reassembled"], s["timeout"], s["incomplete"]) == (
        2010, 270, 29, 1)


# ------------------------------------------------------------------ the car: a slice


def test_car_slice_stores_exactly_the_decoded_frames(replayed: Replayed) -> None:
    s = replayed.summary("car")
    assert (s["readings"], s["sent"], s["accepted"], s["rejected"]) == (CAR_LIMIT, CAR_LIMIT,
                                                                        CAR_LIMIT, 0)
    expected = _decoded(CAR, "car-1", replayed.car_start, limit=CAR_LIMIT)
    want_ids = [ensure_reading_id(r) for r in expected]
    stored = replayed.records["car-1"]
    assert len(stored) == CAR_LIMIT
    assert sorted(r["reading_id"] for r in stored) == sorted(want_ids)
    assert min(_us(r["ts"]) for r in stored) == _us(_rfc3339(replayed.car_start))
    assert sum(r["readings"] for r in replayed.aggregates["car-1"]) == CAR_LIMIT


def test_car_obd2_speed_and_gnss_speed_agree_in_the_lake(replayed: Replayed) -> None:
    stored = sorted(replayed.records["car-1"], key=lambda r: _us(r["ts"]))
    obd = [(_us(r["ts"]), r["signals"][SPEED]) for r in stored if SPEED in r["signals"]]
    gnss = [(_us(r["ts"]), r["signals"]["gnss_speed.Speed"] * 3.6)  # m/s, left unmapped
            for r in stored if "gnss_speed.Speed" in r["signals"]]
    assert len(obd) > 300 and len(gnss) > 100
    assert max(v for _, v in obd) > 50  # driving, not parked
    times = [t for t, _ in obd]
    diffs = []
    for t, v in gnss:
        i = bisect.bisect_left(times, t)
        j = min((k for k in (i - 1, i) if 0 <= k < len(obd)), key=lambda k: abs(times[k] - t))
        diffs.append(abs(obd[j][1] - v))
    assert statistics.median(diffs) < 1.0
    # The aggregates tell the same story: mean speeds within 2 km/h of each other.
    rows = replayed.aggregates["car-1"]
    obd_mean = _stat(rows, SPEED)["mean"]
    gnss_mean = _stat(rows, "gnss_speed.Speed")["mean"] * 3.6
    assert obd_mean == pytest.approx(gnss_mean, abs=2.0)


# ------------------------------------------------------------------ a log with a relative clock


def test_relative_clock_log_replays_with_time_now_and_with_a_start(replayed: Replayed) -> None:
    offsets = [round(i * 0.01, 6) for i in range(20)]
    rpm = [650.0 + 10 * i for i in range(20)]

    at = sorted(replayed.records["tiny-at"], key=lambda r: r["ts"])
    assert [r["signals"] for r in at] == [{RPM: v} for v in rpm]
    want = [_us(_rfc3339(replayed.tiny_start + timedelta(seconds=o))) for o in offsets]
    # Within a microsecond: the shift is float arithmetic on epoch seconds.
    assert all(abs(_us(r["ts"]) - w) <= 1 for r, w in zip(at, want, strict=True))

    now = sorted(replayed.records["tiny-now"], key=lambda r: r["ts"])
    assert [r["signals"] for r in now] == [{RPM: v} for v in rpm]
    before, after = replayed.tiny_now
    last = datetime.fromisoformat(now[-1]["ts"])
    assert before - timedelta(seconds=1) <= last <= after  # the log ends when it was replayed
    us = [_us(r["ts"]) for r in now]
    assert all(abs(b - a - 10_000) <= 1 for a, b in itertools.pairwise(us))  # the log's pace

    for name in ("tiny-now", "tiny-at"):
        assert sum(r["readings"] for r in replayed.aggregates[name]) == 20
        assert _stat(replayed.aggregates[name], RPM)["mean"] == pytest.approx(745)


# ------------------------------------------------------------------ the simulator's faults


def test_simulated_resends_and_late_data_are_stored_and_counted_once(replayed: Replayed) -> None:
    s = replayed.summary("sim")
    generated, resent = int(s["readings"]), int(s["resent"])
    assert generated == 5 * 5 * 4
    assert resent > 0 and s["late"] > 0  # the faults did happen (seed 3)
    assert (s["sent"], s["accepted"], s["rejected"]) == (generated + resent,) * 2 + (0,)

    stored = [r for v, recs in replayed.records.items() if v.startswith("sim-") for r in recs]
    ids = {r["reading_id"] for r in stored}
    # At-least-once: a batch sent twice is stored twice; it is the same readings, same ids...
    assert len(ids) == generated
    assert len(stored) == generated + resent
    # ...and the aggregates count each reading once.
    rows = [row for v, rs in replayed.aggregates.items() if v.startswith("sim-") for row in rs]
    assert sum(row["readings"] for row in rows) == generated
    # Late data keeps its original ts: readings of a gap arrive seconds after they were taken.
    lateness = [datetime.fromisoformat(r["received_at"]) - datetime.fromisoformat(r["ts"])
                for r in stored]
    assert max(lateness) > timedelta(seconds=1.5)
