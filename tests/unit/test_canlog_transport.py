"""Multi-frame messages through the replay decoder (telemetry.adapters.canlog): J1939 TP and
DM1, ISO-TP replies decoded by a DBC in CSS Electronics' convention or by the OBD2 decoder,
and MF4 logs. The reassemblers alone: tests/unit/test_can_transport.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("can", reason="the CAN extras (python-can, cantools) are not installed")
pytest.importorskip("cantools", reason="the CAN extras (python-can, cantools) are not installed")
pytest.importorskip("asammdf", reason="the CAN extras (asammdf) are not installed")

import can

from telemetry.adapters.canlog import (
    CanLogError,
    DecodeStats,
    FrameDecoder,
    SignalMap,
    check_log,
    decode_obd2_payload,
    load_dbc,
    parse_id_ranges,
    read_frames,
    replay_readings,
)
from telemetry.entrypoints import replay as replay_cmd
from tests.unit.test_can_transport import bam, isotp, rts_cts

# The J1939 demo DBC (EEC1), plus a DBC message on the TP.DT PGN: fragments must never decode.
J1939_DBC = """VERSION ""

NS_ :

BS_:

BU_:

BO_ 2364540158 EEC1: 8 Vector__XXX
 SG_ EngineSpeed : 24|16@1+ (0.125,0) [0|8031.875] "rpm" Vector__XXX

BO_ 2632712190 TPDT: 8 Vector__XXX
 SG_ Seq : 0|8@1+ (1,0) [0|255] "" Vector__XXX

BO_ 2633950206 EC1: 39 Vector__XXX
 SG_ SpeedAtIdle : 0|16@1+ (0.125,0) [0|8031.875] "rpm" Vector__XXX
 SG_ Far : 296|8@1+ (1,0) [0|255] "" Vector__XXX

BA_DEF_ BO_  "VFrameFormat" ENUM  "StandardCAN","ExtendedCAN","reserved","J1939PG";
BA_DEF_  "ProtocolType" STRING ;
BA_DEF_DEF_  "VFrameFormat" "J1939PG";
BA_DEF_DEF_  "ProtocolType" "";
BA_ "ProtocolType" "J1939";
"""

# CSS Electronics' UDS convention, as their Kona EV DBC: the payload from byte 1 of the first
# frame (the low byte of the length), the service id at byte 1, the DID at bytes 2-3, both
# multiplexers; 62 bytes, so only ISO-TP carries it.
UDS_DBC = """VERSION ""

NS_ :

BS_:

BU_:

BO_ 2028 Battery: 62 Vector__XXX
 SG_ Soc m257 : 64|8@1+ (0.5,0) [0|100] "%" Vector__XXX
 SG_ Volts m258 : 64|16@1+ (0.1,0) [0|1000] "V" Vector__XXX
 SG_ response m98M : 23|16@0+ (1,0) [0|0] "" Vector__XXX
 SG_ service M : 15|8@0+ (1,0) [0|0] "" Vector__XXX

SG_MUL_VAL_ 2028 Soc response 257-257;
SG_MUL_VAL_ 2028 Volts response 258-258;
SG_MUL_VAL_ 2028 response service 98-98;
"""


@pytest.fixture
def j1939(tmp_path: Path) -> FrameDecoder:
    p = tmp_path / "j1939.dbc"
    p.write_text(J1939_DBC)
    return FrameDecoder(load_dbc(p))


@pytest.fixture
def uds(tmp_path: Path) -> FrameDecoder:
    p = tmp_path / "uds.dbc"
    p.write_text(UDS_DBC)
    return FrameDecoder(load_dbc(p))


def msg(ts: float, arb: int, data: bytes, channel: Any = 1, ext: bool | None = None
        ) -> can.Message:
    return can.Message(timestamp=ts, arbitration_id=arb, data=data, channel=channel,
                       is_extended_id=arb > 0x7FF if ext is None else ext)


def run(dec: FrameDecoder, frames: list[tuple[float, Any, int, bytes]]) -> list[dict[str, Any]]:
    out = []
    for ts, ch, arb, data in frames:
        out.extend(dec.decode(msg(ts, arb, data, ch)))
    dec.finish(frames[-1][0])
    return out


def balanced(s: DecodeStats) -> bool:
    return s.frames - s.transport_frames + s.reassembled == (
        s.decoded + s.unknown + s.decode_errors + s.obd2_unsupported + s.no_signals
        + s.non_data + s.bad_ts)


TRUCK_DM1 = bytes.fromhex("43ffd403097e900c140261020901" "61020c03")


def test_dm1_by_bam_gives_one_reading_per_dtc(j1939: FrameDecoder) -> None:
    out = run(j1939, bam(TRUCK_DM1, sa=0x00, t0=1.7e9))
    assert [(r["J1939.DM1.SPN"], r["J1939.DM1.FMI"], r["J1939.DM1.OccurrenceCount"])
            for r in out] == [(980, 9, 126), (3216, 20, 2), (609, 9, 1), (609, 12, 3)]
    assert {r["J1939.DM1.MalfunctionIndicatorLamp"] for r in out} == {"On"}
    assert {r["J1939.DM1.ActiveDTCs"] for r in out} == {4}
    s = j1939.stats
    assert (s.frames, s.transport_frames, s.reassembled, s.decoded, s.dm1) == (4, 4, 1, 1, 1)
    assert balanced(s)
    # The DBC's TPDT (PGN 0xEBFF) would decode each packet as a message: fragments never do.
    plain = FrameDecoder(j1939.db, j1939=False)
    assert [r for f in bam(TRUCK_DM1) for r in plain.decode(msg(f[0] + 1.7e9, f[2], f[3]))
            ] == [{"TPDT.Seq": n} for n in (1, 2, 3)]


def test_dm1_in_one_frame_from_any_source(j1939: FrameDecoder) -> None:
    out = j1939.decode(msg(1.7e9, 0x18FECA03, bytes.fromhex("0400640001 03ffff".replace(" ", ""))))
    assert out == [{
        "J1939.DM1.SourceAddress": 3, "J1939.DM1.ActiveDTCs": 1,
        "J1939.DM1.MalfunctionIndicatorLamp": "Off", "J1939.DM1.RedStopLamp": "Off",
        "J1939.DM1.AmberWarningLamp": "On", "J1939.DM1.ProtectLamp": "Off",
        "J1939.DM1.MalfunctionIndicatorLampFlash": "SlowFlash",
        "J1939.DM1.RedStopLampFlash": "SlowFlash",
        "J1939.DM1.AmberWarningLampFlash": "SlowFlash",
        "J1939.DM1.ProtectLampFlash": "SlowFlash",
        "J1939.DM1.SPN": 100, "J1939.DM1.FMI": 1, "J1939.DM1.OccurrenceCount": 3,
        "J1939.DM1.ConversionMethod": 0,
    }]


def test_tp_messages_decode_by_pgn_and_fragments_never_do(j1939: FrameDecoder) -> None:
    # EC1 (PGN 0xFEE3, 39 bytes) by RTS/CTS from 0x00 to 0x17, between EEC1 frames.
    ec1 = bytes([0x50, 0x14]) + bytes(range(2, 39))
    eec1 = bytes.fromhex("607D8448140 0F084".replace(" ", ""))
    frames = rts_cts(ec1, sa=0x00, da=0x17, pgn=0xFEE3, t0=1.7e9, window=3)
    frames.insert(3, (frames[2][0], 1, 0x0CF00400, eec1))
    out = run(j1939, frames)
    # The DBC's EC1 is 39 bytes, its `Far` signal at byte 37 in reach; TPDT never decodes.
    assert out == [{"EEC1.EngineSpeed": 649.0}, {"EC1.SpeedAtIdle": 0x1450 * 0.125, "EC1.Far": 37}]
    s = j1939.stats
    assert s.reassembled == 1 and s.decode_errors == 0 and balanced(s)
    assert s.transport_frames == len(frames) - 1


def test_broken_transfers_are_counted_by_reason(j1939: FrameDecoder) -> None:
    frames = bam(TRUCK_DM1, t0=1.7e9)
    frames = frames[:2] + frames[3:]  # packet 2 lost
    frames += bam(TRUCK_DM1, sa=0x03, t0=1.7e9 + 1)[:3]  # cut off by the end of the log
    assert run(j1939, frames) == []
    s = j1939.stats
    assert dict(s.transfers_dropped) == {"out_of_sequence": 1, "incomplete": 1}
    assert s.stray_frames == 0 and s.reassembled == 0 and balanced(s)
    assert replay_cmd.format_stats(s)[1:3] == [
        "transport_frames=6 reassembled=0 transfers_dropped=2 stray_frames=0",
        "transfers dropped: incomplete=1, out_of_sequence=1",
    ]


def test_without_j1939_messages_in_the_dbc_tp_frames_are_plain_frames(uds: FrameDecoder) -> None:
    assert run(uds, bam(TRUCK_DM1, t0=1.7e9)) == []
    assert uds.stats.unknown == 4 and uds.stats.transport_frames == 0


# ------------------------------------------------------------------ ISO-TP


def _uds_reply(did: int, data: bytes) -> bytes:
    """A positive reply to UDS 0x22 ReadDataByIdentifier, padded to the Kona's 62 bytes."""
    return (bytes([0x62]) + did.to_bytes(2, "big") + data).ljust(62, b"\x00")


def test_isotp_reply_decodes_with_a_css_convention_dbc(uds: FrameDecoder) -> None:
    soc = _uds_reply(0x0101, bytes([0xFF, 0xF7, 0xE7, 0xFF, 100]))  # byte 8 of the DBC payload
    volts = _uds_reply(0x0102, bytes([0, 0, 0, 0]) + (3875).to_bytes(2, "little"))
    frames = [(1.7e9 + i * 0.01, 1, 0x7EC, f) for i, f in enumerate(isotp(soc) + isotp(volts))]
    out = run(uds, frames)
    assert out == [{"Battery.service": 98, "Battery.response": 257, "Battery.Soc": 50.0},
                   {"Battery.service": 98, "Battery.response": 258, "Battery.Volts": 387.5}]
    s = uds.stats
    assert (s.transport_frames, s.reassembled, s.decoded) == (18, 2, 2) and balanced(s)


def test_isotp_short_reply_decodes_what_it_reaches(uds: FrameDecoder) -> None:
    # 10 bytes: the multiplexers and SoC are in reach (DBC payload byte 8), not 62 bytes' worth.
    out = run(uds, [(1.7e9 + i * 0.01, 1, 0x7EC, f)
                    for i, f in enumerate(isotp(bytes([0x62, 1, 1, 0, 0, 0, 0, 120, 0, 0])))])
    assert out == [{"Battery.service": 98, "Battery.response": 257, "Battery.Soc": 60.0}]


def test_isotp_broken_reply_is_never_decoded(uds: FrameDecoder) -> None:
    frames = isotp(_uds_reply(0x0101, bytes([0, 0, 0, 0, 100])))
    frames[4] = frames[5]  # a wrong sequence number
    assert run(uds, [(1.7e9 + i * 0.01, 1, 0x7EC, f) for i, f in enumerate(frames)]) == []
    assert uds.stats.transfers_dropped == {"out_of_sequence": 1} and balanced(uds.stats)


def test_obd2_multi_frame_replies_mode_01_and_vin(uds: FrameDecoder) -> None:
    # Six PIDs in one mode 01 reply (13 bytes: a first and a consecutive frame), then the VIN.
    pids = bytes.fromhex("41 0C 1AF8 0D 3C 05 85 0B 6D 11 80 2F 40".replace(" ", ""))
    vin = bytes([0x49, 0x02, 0x01]) + b"1M8GDM9AXKP042788"
    frames = [(1.7e9 + i * 0.01, 1, 0x7E8, f) for i, f in enumerate(isotp(pids) + isotp(vin))]
    out = run(uds, frames)
    assert out[0] == pytest.approx({
        "OBD2.EngineSpeed": 1726.0, "OBD2.VehicleSpeed": 60, "OBD2.CoolantTemperature": 93,
        "OBD2.IntakeManifoldPressure": 0x6D, "OBD2.ThrottlePosition": 0x80 * 100 / 255,
        "OBD2.FuelLevel": 0x40 * 100 / 255})
    assert out[1] == {"OBD2.VIN": "1M8GDM9AXKP042788"}
    assert uds.stats.obd2 == 2 and uds.stats.reassembled == 2


def test_obd2_payload_decoder() -> None:
    assert decode_obd2_payload(b"\x41\x0d\x3c") == {"VehicleSpeed": 60}
    assert decode_obd2_payload(b"\x49\x02\x01" + b"\x00\x00" + b"WDB1234561A123456") == {
        "VIN": "WDB1234561A123456"}
    assert decode_obd2_payload(b"\x49\x02\x01SHORT") == {}
    assert decode_obd2_payload(b"\x7f\x01\x12") == {}


def test_isotp_ids_are_configurable(tmp_path: Path) -> None:
    assert parse_id_ranges("0x7E8-0x7EF, 0x7BB") == ((0x7E8, 0x7EF), (0x7BB, 0x7BB))
    assert parse_id_ranges("none") == ()
    assert parse_id_ranges("0x18DAF100-0x18DAF1FF") == ((0x18DAF100, 0x18DAF1FF),)
    for bad in ("0x7EF-0x7E8", "0x7F0-0x800", "seven", "0x20000000"):
        with pytest.raises(CanLogError):
            parse_id_ranges(bad)
    p = tmp_path / "uds.dbc"
    p.write_text(UDS_DBC)
    reply = isotp(bytes.fromhex("410D3C"))[0]
    own = FrameDecoder(load_dbc(p), isotp_ids=parse_id_ranges("0x7A0"))
    assert own.is_isotp(0x7A0, False) and own.is_isotp(0x7EC, False)  # the DBC's own, always
    assert not own.is_isotp(0x7E8, False)
    # 0x7E8 is then a plain frame, still an OBD2 reply (a single frame).
    assert own.decode(msg(1.7e9, 0x7E8, reply)) == [{"OBD2.VehicleSpeed": 60}]
    p2 = argparse.ArgumentParser()
    replay_cmd.add_parser(p2.add_subparsers())
    args = p2.parse_args(["replay", "--dbc", "d", "--log", "l", "--vehicle-id", "v",
                          "--isotp-ids", "0x7E8,0x7BB"])
    assert args.isotp_ids == ((0x7E8, 0x7E8), (0x7BB, 0x7BB))
    with pytest.raises(SystemExit):
        p2.parse_args(["replay", "--dbc", "d", "--log", "l", "--vehicle-id", "v",
                       "--isotp-ids", "0x7E8-"])


def test_map_renames_dm1_signals(tmp_path: Path) -> None:
    m = SignalMap.from_obj({"unmapped": "drop", "signals": {"J1939.DM1.SPN": "Fleet.Dtc.Spn"}})
    p = tmp_path / "j1939.dbc"
    p.write_text(J1939_DBC)
    dec = FrameDecoder(load_dbc(p), signal_map=m)
    assert dec.decode(msg(1.7e9, 0x18FECA00, bytes.fromhex("0000640001030000"))) == [
        {"Fleet.Dtc.Spn": 100}]


# ------------------------------------------------------------------ MF4


def _mf4(path: Path, frames: list[can.Message]) -> Path:
    with can.MF4Writer(str(path)) as w:
        for f in frames:
            w.on_message_received(f)
    return path


def test_finalized_mf4_with_any_suffix_case(tmp_path: Path) -> None:
    t0 = 1.7e9
    frames = [msg(t0 + i * 0.01, 0x0CF00400, bytes.fromhex("607D844814 00F084".replace(" ", "")),
                  channel=0) for i in range(3)]
    frames += [msg(t0 + 0.1 + i * 0.05, arb, data, channel=0)
               for i, (_, _, arb, data) in enumerate(bam(TRUCK_DM1))]
    for name in ("log.mf4", "LOG.MF4"):
        log = _mf4(tmp_path / name, frames)
        assert log.read_bytes()[:3] == b"MDF"  # finalized, unlike the loggers' UnFinMF
        dec = FrameDecoder.from_files(_write(tmp_path / "j.dbc", J1939_DBC))
        out = [r.reading for r in replay_readings(log, dec, "truck-1")]
        assert [r["signals"].get("EEC1.EngineSpeed") for r in out[:3]] == [649.0] * 3
        assert [r["signals"]["J1939.DM1.SPN"] for r in out[3:]] == [980, 3216, 609, 609]
        assert out[0]["ts"] == "2023-11-14T22:13:20.000000Z"


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_mf4_without_can_frames_is_a_clear_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from asammdf import MDF, Signal

    signals = MDF(version="4.10")
    signals.append([Signal(np.array([650.0, 655.0]), np.array([0.0, 1.0]), name="EngineSpeed")])
    measured = tmp_path / "measured.mf4"
    signals.save(measured, overwrite=True)
    empty = _mf4(tmp_path / "empty.MF4", [])
    dbc = _write(tmp_path / "j.dbc", J1939_DBC)
    for log in (measured, empty):
        with pytest.raises(CanLogError, match="holds no CAN frame"):
            check_log(log)
        p = argparse.ArgumentParser()
        replay_cmd.add_parser(p.add_subparsers())
        args = p.parse_args(["replay", "--dbc", str(dbc), "--log", str(log), "--vehicle-id",
                             "v", "--dry-run"])
        assert args.func(args) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and "holds no CAN frame" in err and str(log) in err
    garbage = _write(tmp_path / "garbage.mf4", "not an MDF file")
    with pytest.raises(CanLogError, match="unreadable after 0 frames"):
        list(read_frames(garbage))
