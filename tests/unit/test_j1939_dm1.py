"""J1939-73 DM1 decoding (telemetry.adapters.j1939_dm1) on crafted messages, field by field.

The messages are built here bit by bit from the J1939-73 layout, independently of the decoder:
byte 1 lamp status, byte 2 lamp flash (MIL bits 8-7, red stop 6-5, amber 4-3, protect 2-1),
then per DTC: byte 3 SPN bits 1-8, byte 4 SPN bits 9-16, byte 5 SPN bits 17-19 (in its top
3 bits) and FMI (low 5), byte 6 conversion method (top bit) and occurrence count (low 7).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.adapters.j1939_dm1 import (
    LAMP_FLASH,
    LAMP_STATUS,
    LAMPS,
    Dtc,
    decode_dm1,
    dm1_signals,
    is_dm1,
)
from telemetry.domain.readings import SIGNAL_NAME_PATTERN


def lamps_byte(mil: int, rsl: int, awl: int, pl: int) -> int:
    return (mil << 6) | (rsl << 4) | (awl << 2) | pl


def dtc_bytes(spn: int, fmi: int, oc: int, cm: int = 0) -> bytes:
    return bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) << 5) | fmi, (cm << 7) | oc])


def test_one_dtc_in_a_single_frame() -> None:
    # MIL on, amber on, the rest off; no flash information; SPN 100 (engine oil pressure),
    # FMI 1 (below normal, most severe), seen 3 times; the frame padded with 0xFF.
    data = bytes([lamps_byte(1, 0, 1, 0), 0xFF]) + dtc_bytes(100, 1, 3) + b"\xff\xff"
    assert data.hex() == "44ff64000103ffff"
    dm1 = decode_dm1(data)
    assert dm1 is not None
    assert dm1.lamps == (1, 0, 1, 0)
    assert dm1.flash == (3, 3, 3, 3)
    assert dm1.dtcs == (Dtc(spn=100, fmi=1, conversion_method=0, occurrence_count=3),)


def test_the_truck_logs_dm1_field_by_field() -> None:
    # As the sample truck sends it, by BAM (18 bytes): MIL on, protect lamp not available.
    data = bytes.fromhex("43ffd403097e900c140261020901 61020c03".replace(" ", ""))
    dm1 = decode_dm1(data)
    assert dm1 is not None
    assert dm1.lamps == (1, 0, 0, 3)
    assert [(d.spn, d.fmi, d.conversion_method, d.occurrence_count) for d in dm1.dtcs] == [
        (980, 9, 0, 126), (3216, 20, 0, 2), (609, 9, 0, 1), (609, 12, 0, 3)]


def test_many_dtcs_with_every_field_at_its_limits() -> None:
    codes = [
        (0x7FFFE, 31, 126, 1),  # the largest SPN short of "not available", every FMI bit
        (0x40000, 0, 0, 0),  # only SPN bit 19 set
        (0x10000, 16, 1, 0),  # only SPN bit 17 and FMI bit 5
        (0x00100, 2, 64, 1),  # SPN bit 9, OC bit 7, conversion method 1
        (1, 5, 127, 0),  # occurrence count 127: not available
    ]
    data = bytes([lamps_byte(0, 1, 2, 3), lamps_byte(1, 0, 3, 2)])
    data += b"".join(dtc_bytes(spn, fmi, oc, cm) for spn, fmi, oc, cm in codes)
    dm1 = decode_dm1(data)
    assert dm1 is not None
    assert dm1.lamps == (0, 1, 2, 3) and dm1.flash == (1, 0, 3, 2)
    assert [(d.spn, d.fmi, d.occurrence_count, d.conversion_method) for d in dm1.dtcs] == codes


@given(st.lists(st.tuples(st.integers(1, 0x7FFFE), st.integers(0, 31), st.integers(0, 127),
                          st.integers(0, 1)), max_size=40),
       st.tuples(*[st.integers(0, 3)] * 4), st.tuples(*[st.integers(0, 3)] * 4))
def test_any_dtc_list_round_trips(codes: list[tuple[int, int, int, int]],
                                  lamps: tuple[int, int, int, int],
                                  flash: tuple[int, int, int, int]) -> None:
    data = bytes([lamps_byte(*lamps), lamps_byte(*flash)])
    data += b"".join(dtc_bytes(spn, fmi, oc, cm) for spn, fmi, oc, cm in codes)
    dm1 = decode_dm1(data)
    assert dm1 is not None and dm1.lamps == lamps and dm1.flash == flash
    assert [(d.spn, d.fmi, d.occurrence_count, d.conversion_method) for d in dm1.dtcs] == codes


@pytest.mark.parametrize("data", [
    "0000000000000000",  # J1939-73's "no active DTC": SPN 0, FMI 0, count 0
    "00ff00000000ffff",
    "00ffffffffffffff",  # padding only
    "c0ff",  # lamps only
])
def test_no_active_dtc(data: str) -> None:
    dm1 = decode_dm1(bytes.fromhex(data))
    assert dm1 is not None and dm1.dtcs == ()


def test_too_short_is_no_dm1() -> None:
    assert decode_dm1(b"\x00") is None


def test_signals_one_set_per_dtc_with_lamps_and_sender() -> None:
    data = bytes([lamps_byte(1, 0, 1, 3), lamps_byte(0, 3, 3, 3)])
    data += dtc_bytes(100, 1, 3) + dtc_bytes(110, 0, 1)
    dm1 = decode_dm1(data)
    assert dm1 is not None
    sets = dm1_signals(dm1, 0x00)
    common = {
        "SourceAddress": 0, "ActiveDTCs": 2,
        "MalfunctionIndicatorLamp": "On", "MalfunctionIndicatorLampFlash": "SlowFlash",
        "RedStopLamp": "Off", "RedStopLampFlash": "NotAvailable",
        "AmberWarningLamp": "On", "AmberWarningLampFlash": "NotAvailable",
        "ProtectLamp": "NotAvailable", "ProtectLampFlash": "NotAvailable",
    }
    assert sets == [
        {**common, "SPN": 100, "FMI": 1, "OccurrenceCount": 3, "ConversionMethod": 0},
        {**common, "SPN": 110, "FMI": 0, "OccurrenceCount": 1, "ConversionMethod": 0},
    ]
    raw = dm1_signals(dm1, 0x03, labels=False)
    assert raw[0]["MalfunctionIndicatorLamp"] == 1 and raw[0]["ProtectLamp"] == 3
    assert raw[0]["SourceAddress"] == 3
    none = decode_dm1(bytes([0, 0xFF]) + bytes(6))
    assert none is not None
    assert dm1_signals(none, 0) == [{**common, "ActiveDTCs": 0, "MalfunctionIndicatorLamp": "Off",
                                     "AmberWarningLamp": "Off", "ProtectLamp": "Off",
                                     "MalfunctionIndicatorLampFlash": "NotAvailable"}]
    # Every name is valid under the `J1939.DM1.` prefix the decoder adds.
    for name in sets[0]:
        assert re.search(SIGNAL_NAME_PATTERN, f"J1939.DM1.{name}")
    assert len(LAMPS) == len(LAMP_STATUS) == len(LAMP_FLASH) == 4


def test_dm1_ids() -> None:
    assert is_dm1(0x18FECA00) and is_dm1(0x1CFECA03) and is_dm1(0x0CFECAFE)
    assert not is_dm1(0x18FECB00) and not is_dm1(0x18FEC900)
