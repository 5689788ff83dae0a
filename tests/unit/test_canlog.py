"""CAN log decoding (telemetry.adapters.canlog) and the replay command on small synthetic logs.

The real logs are exercised in tests/integration/test_replay_real_logs.py.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("can", reason="the CAN extras (python-can, cantools) are not installed")
pytest.importorskip("cantools", reason="the CAN extras (python-can, cantools) are not installed")

import can
import msgspec

from telemetry.adapters.canlog import (
    CanLogError,
    FrameDecoder,
    RelativeClockError,
    SignalMap,
    decode_obd2,
    is_obd2_reply,
    load_dbc,
    read_frames,
    replay_readings,
    scan_log,
)
from telemetry.adapters.ingest_client import ClientSummary
from telemetry.domain.readings import Reading
from telemetry.entrypoints import replay as replay_cmd

# A DBC with what real ones contain: a multiplexed message, choices, IEEE floats, a message
# whose name breaks the signal-name rule, and a very long choice label.
DBC = """VERSION ""

NS_ :

BS_:

BU_:

BO_ 100 Mux: 8 Vector__XXX
 SG_ Sel M : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ Temp m1 : 8|16@1+ (0.1,-40) [-40|6513.5] "degC" Vector__XXX
 SG_ Gear m2 : 8|8@1+ (1,0) [0|255] "" Vector__XXX

BO_ 101 Floats: 8 Vector__XXX
 SG_ F : 0|32@1- (1,0) [0|0] "" Vector__XXX
 SG_ G : 32|32@1- (1,0) [0|0] "" Vector__XXX

BO_ 102 _bad: 1 Vector__XXX
 SG_ X : 0|8@1+ (1,0) [0|255] "" Vector__XXX

BO_ 103 Speed: 2 Vector__XXX
 SG_ Mps : 0|16@1+ (0.01,0) [0|655.35] "m/s" Vector__XXX

BO_ 2365587710 Ext: 8 Vector__XXX
 SG_ V : 0|8@1+ (1,0) [0|255] "" Vector__XXX

SIG_VALTYPE_ 101 F : 1;
SIG_VALTYPE_ 101 G : 1;
VAL_ 100 Gear 0 "Park" 1 "Drive" 2 "LONG_LABEL" ;
"""

# The J1939 part of CSS Electronics' demo DBC: EEC1 defined with priority 3 and SA 0xFE.
J1939_DBC = """VERSION ""

NS_ :

BS_:

BU_:

BO_ 2364540158 EEC1: 8 Vector__XXX
 SG_ EngineSpeed : 24|16@1+ (0.125,0) [0|8031.875] "rpm" Vector__XXX

BO_ 2566844926 CCVS1: 8 Vector__XXX
 SG_ WheelBasedVehicleSpeed : 8|16@1+ (0.00390625,0) [0|250.996] "km/h" Vector__XXX

BA_DEF_ BO_  "VFrameFormat" ENUM  "StandardCAN","ExtendedCAN","reserved","J1939PG";
BA_DEF_  "ProtocolType" STRING ;
BA_DEF_DEF_  "VFrameFormat" "J1939PG";
BA_DEF_DEF_  "ProtocolType" "";
BA_ "ProtocolType" "J1939";
BA_ "VFrameFormat" BO_ 2364540158 3;
BA_ "VFrameFormat" BO_ 2566844926 3;
"""


@pytest.fixture
def dbc(tmp_path: Path) -> Path:
    p = tmp_path / "test.dbc"
    p.write_text(DBC.replace("LONG_LABEL", "x" * 300))
    return p


@pytest.fixture
def j1939_dbc(tmp_path: Path) -> Path:
    p = tmp_path / "j1939.dbc"
    p.write_text(J1939_DBC)
    return p


def frame(arb_id: int, data: bytes, ts: float = 1.7e9, ext: bool | None = None) -> can.Message:
    return can.Message(
        timestamp=ts, arbitration_id=arb_id, data=data,
        is_extended_id=arb_id > 0x7FF if ext is None else ext,
    )


def write_candump(path: Path, frames: list[tuple[float, int, bytes]], *, ext: bool = False) -> Path:
    lines = []
    for ts, arb_id, data in frames:
        ident = f"{arb_id:08X}" if ext or arb_id > 0x7FF else f"{arb_id:03X}"
        lines.append(f"({ts:.6f}) can0 {ident}#{data.hex().upper()}\n")
    text = "".join(lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ------------------------------------------------------------------ OBD2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("04410C1AF8000000", {"EngineSpeed": (0x1A * 256 + 0xF8) / 4}),  # (256A+B)/4 rpm
        ("03410D3C00000000", {"VehicleSpeed": 60}),  # A km/h
        ("0341058500000000", {"CoolantTemperature": 0x85 - 40}),  # A-40 degC, from the car log
        ("03410B6D00000000", {"IntakeManifoldPressure": 0x6D}),
        ("0641 0C 1AF8 0D 3C".replace(" ", "") + "00", {"EngineSpeed": 1726.0, "VehicleSpeed": 60}),
        ("044142 3A98 000000".replace(" ", ""), {"ControlModuleVoltage": 15.0}),
    ],
)
def test_obd2_mode01_single_frames_decode_by_j1979(data: str, expected: dict[str, float]) -> None:
    assert decode_obd2(bytes.fromhex(data)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "data",
    [
        "1014490201314A34",  # ISO-TP first frame (a VIN, mode 09)
        "037F011200000000",  # negative response
        "0342 0C 1AF8 000000".replace(" ", ""),  # not mode 01
        "0341 FE 00 00000000".replace(" ", "")[:16],  # unknown PID
        "04410C1A",  # length byte promises more than the frame holds
        "0241",  # too short
    ],
)
def test_obd2_frames_without_a_known_mode01_value_decode_to_nothing(data: str) -> None:
    assert decode_obd2(bytes.fromhex(data)) == {}


def test_obd2_reply_ids() -> None:
    assert is_obd2_reply(0x7E8, False) and is_obd2_reply(0x7EF, False)
    assert is_obd2_reply(0x18DAF110, True)
    assert not is_obd2_reply(0x7DF, False) and not is_obd2_reply(0x7E8, True)


def test_obd2_is_the_second_decoder_and_the_dbc_wins(dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(dbc))
    speed = [{"OBD2.VehicleSpeed": 60}]
    assert dec.decode(frame(0x7E8, bytes.fromhex("03410D3C00000000"))) == speed
    assert dec.decode(frame(0x7E8, bytes.fromhex("037F011200000000"))) == []  # negative reply
    assert dec.stats.obd2 == 1 and dec.stats.obd2_unsupported == 1
    # The first frame of a multi-frame reply is a fragment, never decoded on its own.
    assert dec.decode(frame(0x7E8, bytes.fromhex("1014490201314A34"))) == []
    assert dec.stats.obd2_unsupported == 1 and dec.stats.transport_frames == 1
    off = FrameDecoder(load_dbc(dbc), obd2=False)
    assert off.decode(frame(0x7E8, bytes.fromhex("03410D3C00000000"))) == []
    assert off.stats.unknown == 1


# ------------------------------------------------------------------ DBC decoding


def test_multiplexed_signals_and_choice_labels(dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(dbc))
    assert dec.decode(frame(100, bytes([1, 0x10, 0x02, 0, 0, 0, 0, 0])))[0] == pytest.approx(
        {"Mux.Sel": 1, "Mux.Temp": 0x0210 * 0.1 - 40}
    )
    assert dec.decode(frame(100, bytes([2, 1, 0, 0, 0, 0, 0, 0]))) == [{
        "Mux.Sel": 2, "Mux.Gear": "Drive"
    }]
    raw = FrameDecoder(load_dbc(dbc), raw_choices=True)
    gear = [{"Mux.Sel": 2, "Mux.Gear": 1}]
    assert raw.decode(frame(100, bytes([2, 1, 0, 0, 0, 0, 0, 0]))) == gear


def test_decode_errors_are_counted_never_raised(dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(dbc))
    assert dec.decode(frame(100, bytes([3, 1, 0, 0, 0, 0, 0, 0]))) == []  # unknown mux value
    assert dec.decode(frame(100, bytes([1, 2]))) == []  # short frame
    assert dec.stats.decode_errors == 2
    assert dec.stats.errors_by_message == {"Mux": 2}
    assert "multiplexer" in dec.stats.first_error["Mux"]


def test_values_breaking_the_reading_rules_are_dropped_and_counted(dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(dbc))
    nan_and_ok = struct.pack("<ff", math.nan, 1.5)
    assert dec.decode(frame(101, nan_and_ok)) == [{"Floats.G": 1.5}]
    assert dec.decode(frame(101, struct.pack("<ff", math.inf, -math.inf))) == []
    assert dec.decode(frame(100, bytes([2, 2, 0, 0, 0, 0, 0, 0]))) == [{"Mux.Sel": 2}]  # 300 chars
    assert dec.decode(frame(102, bytes([7]))) == []  # `_bad.X` is no valid signal name
    s = dec.stats
    assert s.dropped == {"not_finite": 3, "string_too_long": 1, "bad_name": 1}
    assert s.no_signals == 2 and s.decoded == 2


def test_unknown_frames_counted_by_id(dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(dbc))
    for arb_id in (0x123, 0x123, 0x17F00010):
        assert dec.decode(frame(arb_id, bytes(8))) == []
    err = can.Message(timestamp=1.7e9, is_error_frame=True)
    assert dec.decode(err) == []
    assert dec.stats.unknown == 3 and dec.stats.non_data == 1
    assert dec.stats.unknown_ids == {"0x123": 2, "0x17F00010": 1}


def test_j1939_matches_by_pgn_whatever_priority_and_source_address(j1939_dbc: Path) -> None:
    dec = FrameDecoder(load_dbc(j1939_dbc))
    data = bytes.fromhex("607D8448140 0F084".replace(" ", ""))
    expected = [{"EEC1.EngineSpeed": 0x1448 * 0.125}]  # 649 rpm
    assert dec.decode(frame(0x0CF00400, data)) == expected  # priority 3, SA 0x00: as logged
    assert dec.decode(frame(0x18F00417, data)) == expected  # priority 6, SA 0x17
    assert dec.decode(frame(0x0CF004FE, data)) == expected  # the DBC's own id
    assert dec.decode(frame(0x0CFEF100, bytes(8))) == [{"CCVS1.WheelBasedVehicleSpeed": 0.0}]
    assert dec.decode(frame(0x0CF00500, data)) == []  # another PGN
    assert dec.decode(frame(0x400, data, ext=False)) == []  # 11-bit ids never match by PGN
    assert dec.stats.decoded == 4 and dec.stats.unknown == 2


def test_pgn_matching_only_for_j1939_messages_unless_forced(dbc: Path) -> None:
    # `Ext` (0x8D0000FE in the DBC: 29-bit 0x0D0000FE) has no J1939 marking: exact id only.
    dec = FrameDecoder(load_dbc(dbc))
    assert dec.decode(frame(0x0D0000FE, bytes(8))) == [{"Ext.V": 0}]
    assert dec.decode(frame(0x0D000017, bytes(8))) == []
    forced = FrameDecoder(load_dbc(dbc), pgn_match=True)
    assert forced.decode(frame(0x0D000017, bytes(8))) == [{"Ext.V": 0}]
    exact = FrameDecoder(load_dbc(dbc), pgn_match=False)
    assert exact.decode(frame(0x0D000017, bytes(8))) == []


def test_bad_dbc_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text("BO_ this is not a dbc")
    with pytest.raises(CanLogError, match=r"DBC .*bad\.dbc"):
        load_dbc(bad)


# ------------------------------------------------------------------ maps


MAP_YAML = """
unmapped: keep
signals:
  Speed.Mps:
    name: Vehicle.Speed
    convert: m/s->km/h
    round: 2
  Mux.Temp: {name: Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature}
  Mux.Gear:
    name: Vehicle.Powertrain.Transmission.SelectedGear
    values: {Park: 126, Drive: 1}
  Floats.G: {name: Vehicle.Exterior.AirTemperature, factor: 2, offset: -1}
"""


def test_map_renames_converts_and_translates_choice_labels(dbc: Path, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MAP_YAML)
    dec = FrameDecoder(load_dbc(dbc), signal_map=SignalMap.load(tmp_path / "m.yaml"))
    assert dec.decode(frame(103, (1000).to_bytes(2, "little"))) == [{"Vehicle.Speed": 36.0}]
    assert dec.decode(frame(100, bytes([2, 0, 0, 0, 0, 0, 0, 0]))) == [{
        "Mux.Sel": 2, "Vehicle.Powertrain.Transmission.SelectedGear": 126
    }]
    # A label the map does not list is dropped, not sent under a VSS name.
    assert dec.decode(frame(100, bytes([2, 2, 0, 0, 0, 0, 0, 0]))) == [{"Mux.Sel": 2}]
    assert dec.decode(frame(101, struct.pack("<ff", 0.0, 1.5))) == [{
        "Floats.F": 0.0, "Vehicle.Exterior.AirTemperature": 2.0
    }]
    assert dec.stats.dropped == {"unmapped_value": 1}


def test_json_map_and_dropping_unmapped_signals(dbc: Path, tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"unmapped": "drop", "signals": {"Speed.Mps": "Vehicle.Speed"}}))
    dec = FrameDecoder.from_files(dbc, map_path=p)
    assert dec.decode(frame(103, (1000).to_bytes(2, "little"))) == [{"Vehicle.Speed": 10.0}]
    assert dec.decode(frame(101, bytes(8))) == []
    assert dec.stats.dropped == {"unmapped_signal": 2} and dec.stats.no_signals == 1


def test_numeric_conversion_refuses_labels(dbc: Path) -> None:
    m = SignalMap.from_obj({"signals": {"Mux.Gear": {"name": "Vehicle.X", "factor": 2}}})
    dec = FrameDecoder(load_dbc(dbc), signal_map=m)
    assert dec.decode(frame(100, bytes([2, 1, 0, 0, 0, 0, 0, 0]))) == [{"Mux.Sel": 2}]
    assert dec.stats.dropped == {"not_numeric": 1}


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        ({"A.b": "Vehicle.Speed", "C.d": "Vehicle.Speed"}, "both map to Vehicle.Speed"),
        ({"A.b": "Vehicle..Speed"}, "must match"),
        ({"A.b": "x" * 129}, "must match"),
        ({"Ab": "Vehicle.Speed"}, "not `<Message>.<Signal>`"),
        ({"A.b": {"name": "Vehicle.Speed", "convert": "furlong->m"}}, "unknown conversion"),
        ({"A.b": {"name": "Vehicle.Speed", "convert": "m->km", "factor": 2}}, "either"),
        ({"A.b": {"name": "Vehicle.Speed", "factor": "2"}}, "finite numbers"),
        ({"A.b": {"name": "Vehicle.Speed", "unit": "km/h"}}, "unknown keys"),
        ({"A.b": {"convert": "m->km"}}, "with `name`"),
        ({"A.b": {"name": "Vehicle.Speed", "values": {"x": 1}, "factor": 2}}, "replaces"),
        ({"A.b": {"name": "Vehicle.Speed", "values": {}}}, "non-empty"),
    ],
)
def test_bad_maps_fail_at_load_naming_the_problem(signals: dict[str, Any], message: str) -> None:
    with pytest.raises(CanLogError, match=message):
        SignalMap.from_obj({"signals": signals}, source="m.yaml")


def test_unparsable_map_file(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("signals: [unclosed")
    with pytest.raises(CanLogError, match="map"):
        SignalMap.load(p)


# ------------------------------------------------------------------ logs and time


RELATIVE = [(0.5, 103, (100).to_bytes(2, "little")), (1.0, 0x7FF, bytes(8)),
            (10.5, 103, (200).to_bytes(2, "little"))]


def test_relative_clock_log_with_now(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "boot.log", RELATIVE)
    now = datetime(2026, 11, 29, 1, 2, 3, 250000, tzinfo=UTC)
    out = list(replay_readings(log, FrameDecoder(load_dbc(dbc)), "car-1", "now", now=now))
    assert [r.reading["ts"] for r in out] == ["2026-11-29T01:01:53.250000Z",
                                              "2026-11-29T01:02:03.250000Z"]
    assert [r.log_ts for r in out] == [0.5, 10.5]
    assert out[1].reading == {"vehicle_id": "car-1", "ts": "2026-11-29T01:02:03.250000Z",
                              "signals": {"Speed.Mps": 2.0}}


def test_relative_clock_log_with_an_rfc3339_start(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "boot.log", RELATIVE)
    start = datetime.fromisoformat("2026-11-29T03:00:00+02:00")
    out = list(replay_readings(log, FrameDecoder(load_dbc(dbc)), "car-1", start))
    # The first frame of the log (not the first decoded one) lands on the start.
    assert [r.reading["ts"] for r in out] == ["2026-11-29T01:00:00.000000Z",
                                              "2026-11-29T01:00:10.000000Z"]


def test_relative_clock_log_with_original_fails_clearly(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "boot.log", RELATIVE)
    with pytest.raises(RelativeClockError, match="use --time now"):
        list(replay_readings(log, FrameDecoder(load_dbc(dbc)), "car-1", "original"))


def test_original_clock_keeps_log_time_and_readings_follow_the_contract(
    dbc: Path, tmp_path: Path
) -> None:
    frames = [(1627275000.0 + i / 100, 103, (i * 10).to_bytes(2, "little")) for i in range(50)]
    log = write_candump(tmp_path / "car.log.gz", frames)
    dec = FrameDecoder(load_dbc(dbc))
    out = [r.reading for r in replay_readings(log, dec, "car-1")]
    assert out[0]["ts"] == "2021-07-26T04:50:00.000000Z"
    assert out[49]["ts"] == "2021-07-26T04:50:00.490000Z"
    msgspec.json.decode(msgspec.json.encode(out), type=list[Reading])  # every rule of section 2
    assert dec.stats.frames == dec.stats.decoded == dec.stats.readings == 50


def test_frames_shifted_before_2000_are_skipped(dbc: Path, tmp_path: Path) -> None:
    # A stray frame with a boot-relative clock inside a wall-clock log.
    log = write_candump(tmp_path / "mixed.log", [(1.7e9, 103, bytes(2)), (5.0, 103, bytes(2))])
    dec = FrameDecoder(load_dbc(dbc))
    assert len(list(replay_readings(log, dec, "car-1"))) == 1
    assert dec.stats.bad_ts == 1 and dec.stats.frames == 2


def test_a_frame_with_more_signals_than_a_reading_takes_is_split(tmp_path: Path) -> None:
    sigs = "".join(f' SG_ S{i} : {i}|1@1+ (1,0) [0|1] "" Vector__XXX\n' for i in range(300))
    p = tmp_path / "wide.dbc"
    p.write_text(f'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_:\n\nBO_ 5 Wide: 64 Vector__XXX\n{sigs}\n')
    log = tmp_path / "wide.log"
    log.write_text(f"(1700000000.000000) can0 005##0{'FF' * 64}\n")  # CAN FD frame
    out = [r.reading for r in replay_readings(log, FrameDecoder(load_dbc(p)), "car-1")]
    assert [len(r["signals"]) for r in out] == [256, 44]
    assert out[0]["ts"] == out[1]["ts"]


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".log.gz", ".asc.gz",
                                    ".blf.gz", ".trc.gz"])
def test_log_formats_and_gzip(dbc: Path, tmp_path: Path, suffix: str) -> None:
    t0 = 1_700_000_000.0
    msgs = [frame(103, (i * 100).to_bytes(2, "little"), ts=t0 + i * 0.25) for i in range(4)]
    msgs.append(frame(0x0D0000FE, bytes([9] * 8), ts=t0 + 1.0))
    plain = tmp_path / ("log" + suffix.removesuffix(".gz"))
    with can.Logger(str(plain)) as writer:
        for m in msgs:
            writer.on_message_received(m)
    path = plain
    if suffix.endswith(".gz"):
        path = tmp_path / ("log" + suffix)
        path.write_bytes(gzip.compress(plain.read_bytes()))
    dec = FrameDecoder(load_dbc(dbc))
    out = list(replay_readings(path, dec, "car-1"))
    assert [r.reading["signals"] for r in out] == [
        {"Speed.Mps": 0.0}, {"Speed.Mps": 1.0}, {"Speed.Mps": 2.0}, {"Speed.Mps": 3.0},
        {"Ext.V": 9},
    ]
    # Every format keeps the wall clock (ASC and TRC store it in the header).
    assert out[0].log_ts == pytest.approx(t0, abs=1e-3)
    assert out[-1].log_ts - out[0].log_ts == pytest.approx(1.0, abs=1e-3)
    span = scan_log(path)
    assert span.frames == 5
    assert (span.first, span.last) == pytest.approx((t0, t0 + 1), abs=1e-3)


def test_unknown_log_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CanLogError, match=r"unknown log format '\.csv'"):
        list(read_frames(tmp_path / "x.csv"))
    with pytest.raises(CanLogError, match="no such file"):
        list(read_frames(tmp_path / "missing.log"))


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    text = "".join(f"({1.7e9 + i:.6f}) can0 067#0000\n" for i in range(5000)).encode()
    p = tmp_path / "cut.log.gz"
    p.write_bytes(gzip.compress(text)[:2000])
    with pytest.raises(CanLogError, match="unreadable after"):
        list(read_frames(p))
    garbage = tmp_path / "garbage.blf"
    garbage.write_bytes(b"not a blf file" * 10)
    with pytest.raises(CanLogError, match="unreadable after 0 frames"):
        list(read_frames(garbage))


# ------------------------------------------------------------------ the replay command


class FakeSender:
    def __init__(self, fail: Any = None) -> None:
        self.summary = ClientSummary()
        self.batches: list[list[dict[str, Any]]] = []
        self.sent_at: list[float] = []
        self.fail = fail
        self.last_error: Any = None

    def send(self, readings: list[dict[str, Any]]) -> list[str]:
        self.batches.append(list(readings))
        self.sent_at.append(time.monotonic())
        self.summary.sent += len(readings)
        if self.fail is not None:
            self.last_error = self.fail
            self.summary.rejected += len(readings)
            return []
        self.summary.accepted += len(readings)
        return [f"id-{self.summary.accepted - len(readings) + i}" for i in range(len(readings))]

    def close(self) -> None:
        pass


def test_replay_batches_and_summarises(dbc: Path, tmp_path: Path) -> None:
    frames = [(1.7e9 + i / 100, 103, bytes(2)) for i in range(12)] + [(1.7e9, 0x321, bytes(1))]
    log = write_candump(tmp_path / "car.log", frames)
    sender = FakeSender()
    r = replay_cmd.replay(dbc=dbc, log=log, vehicle_id="car-1", batch=5, client=sender)
    assert [len(b) for b in sender.batches] == [5, 5, 2]
    assert len(r.accepted_ids) == 12 and r.summary.accepted == 12
    assert r.stats.unknown == 1 and r.stats.decoded == 12
    assert replay_cmd.format_stats(r.stats)[2] == "unknown ids: 0x321 x1"


def test_replay_paces_with_speed(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "car.log", [(1.7e9 + i * 0.1, 103, bytes(2)) for i in range(4)])
    sender = FakeSender()
    r = replay_cmd.replay(dbc=dbc, log=log, vehicle_id="car-1", speed=2.0, batch=100,
                          client=sender)
    assert 0.14 <= r.elapsed < 2.0  # 0.3 s of log at twice the speed
    fast = replay_cmd.replay(dbc=dbc, log=log, vehicle_id="car-1", batch=100,
                             client=FakeSender())
    assert fast.elapsed < r.elapsed


def test_replay_stops_when_the_service_is_unreachable(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "car.log", [(1.7e9 + i, 103, bytes(2)) for i in range(20)])
    gave_up = type("Err", (), {"status": 0, "body": "gave up", "__str__": lambda s: "gave up"})()
    sender = FakeSender(fail=gave_up)
    r = replay_cmd.replay(dbc=dbc, log=log, vehicle_id="car-1", batch=5, client=sender)
    assert len(sender.batches) == 1 and r.stopped and r.errors == ["gave up"]


def test_replay_goes_on_after_a_422(dbc: Path, tmp_path: Path) -> None:
    log = write_candump(tmp_path / "car.log", [(1.7e9 + i, 103, bytes(2)) for i in range(20)])
    err = type("Err", (), {"status": 422, "body": "{}"})()
    sender = FakeSender(fail=err)
    r = replay_cmd.replay(dbc=dbc, log=log, vehicle_id="car-1", batch=5, client=sender)
    assert len(sender.batches) == 4 and not r.stopped


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="telemetry")
    replay_cmd.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["replay", *argv])


def test_cli_dry_run_prints_readings(dbc: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    log = write_candump(tmp_path / "boot.log", RELATIVE)
    args = parse("--dbc", str(dbc), "--log", str(log), "--vehicle-id", "car-1",
                 "--time", "2026-11-29T01:00:00Z", "--dry-run")
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in io.StringIO(out)]
    assert [x["ts"] for x in lines] == [
        "2026-11-29T01:00:00.000000Z", "2026-11-29T01:00:10.000000Z"
    ]
    assert "frames=3 decoded=2" in err and "unknown ids: 0x7FF x1" in err


def test_cli_relative_clock_with_original_exits_2(dbc: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = write_candump(tmp_path / "boot.log", RELATIVE)
    args = parse("--dbc", str(dbc), "--log", str(log), "--vehicle-id", "car-1", "--dry-run")
    assert args.func(args) == 2
    assert "use --time now" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vehicle-id", "bad id!"], "--vehicle-id"),
        (["--vehicle-id", "car-1", "--api-key", ""], "--api-key"),
        (["--vehicle-id", "car-1", "--dry-run", "--map", "/nonexistent.yaml"], "map"),
    ],
)
def test_cli_usage_errors_exit_2(dbc: Path, tmp_path: Path, argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEMETRY_API_KEY", raising=False)
    log = write_candump(tmp_path / "car.log", [(1.7e9, 103, bytes(2))])
    args = parse("--dbc", str(dbc), "--log", str(log), *argv)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--time", "now"], "time_mode", "now"),
        (["--time", "2026-11-29T01:00:00+01:00"], "time_mode",
         datetime(2026, 11, 29, 0, tzinfo=UTC)),
        (["--speed", "max"], "speed", None),
        (["--speed", "2.5"], "speed", 2.5),
        ([], "speed", None),
        ([], "time_mode", "original"),
        ([], "batch", 500),
        ([], "url", "http://127.0.0.1:8000"),
    ],
)
def test_cli_arguments(argv: list[str], attr: str, value: Any) -> None:
    args = parse("--dbc", "d", "--log", "l", "--vehicle-id", "v", *argv)
    assert getattr(args, attr) == value


@pytest.mark.parametrize(
    "argv",
    [["--time", "yesterday"], ["--time", "2026-11-29T01:00:00"], ["--time", "1999-12-31T00:00Z"],
     ["--speed", "0"], ["--speed", "-1"], ["--speed", "fast"], ["--batch", "0"]],
)
def test_cli_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--dbc", "d", "--log", "l", "--vehicle-id", "v", *argv)
