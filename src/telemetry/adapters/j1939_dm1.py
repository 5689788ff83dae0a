"""J1939-73 DM1 (PGN 65226, 0xFECA): a controller's active diagnostic trouble codes.

Layout: byte 1 lamp status, byte 2 lamp flash (2 bits per lamp: malfunction indicator in bits
8-7, red stop 6-5, amber warning 4-3, protect 2-1), then 4 bytes per DTC: SPN (19 bits: byte 3,
byte 4, and the top 3 bits of byte 5), FMI (low 5 bits of byte 5), the SPN conversion method
(top bit of byte 6) and the occurrence count (low 7 bits of byte 6). One DTC fits a frame; more
travel by the transport protocol. Pure logic, no I/O.

As readings: one reading per active DTC, every field a scalar signal under `J1939.DM1.`, plus
the lamps and the sender; a DM1 with no active DTC still gives one reading (lamps, count 0).
See docs/replay.md for the names.
"""

from __future__ import annotations

from dataclasses import dataclass

DM1_PGN = 0xFECA
PREFIX = "J1939.DM1"
LAMPS = ("MalfunctionIndicatorLamp", "RedStopLamp", "AmberWarningLamp", "ProtectLamp")
LAMP_STATUS = ("Off", "On", "Reserved", "NotAvailable")
# J1939-73: 00 slow flash (1 Hz), 01 fast flash (2 Hz), 10 reserved, 11 unavailable/do not flash
LAMP_FLASH = ("SlowFlash", "FastFlash", "Reserved", "NotAvailable")


@dataclass(frozen=True, slots=True)
class Dtc:
    spn: int  # suspect parameter number, 19 bits
    fmi: int  # failure mode identifier, 5 bits
    conversion_method: int  # 0: the SPN layout of J1939-73 version 4, the one decoded here
    occurrence_count: int  # 7 bits; 127 = not available


@dataclass(frozen=True, slots=True)
class Dm1:
    lamps: tuple[int, int, int, int]  # status per LAMPS, 0-3
    flash: tuple[int, int, int, int]  # flash per LAMPS, 0-3
    dtcs: tuple[Dtc, ...]


def is_dm1(arbitration_id: int) -> bool:
    """A 29-bit id carrying DM1 (PGN 0xFECA, any priority and source)."""
    return (arbitration_id >> 8) & 0x3FFFF == DM1_PGN


def decode_dm1(data: bytes) -> Dm1 | None:
    """The lamps and active DTCs of a DM1 payload; None when shorter than its two lamp bytes.

    Entries that hold no DTC are skipped: SPN 0 (J1939-73's "no active DTC" is SPN 0, FMI 0,
    count 0) and all ones (padding, "not available"), as is a trailing part of an entry.
    """
    if len(data) < 2:
        return None
    lamps = _pairs(data[0])
    flash = _pairs(data[1])
    dtcs = []
    for i in range(2, len(data) - 3, 4):
        b = data[i : i + 4]
        spn = b[0] | (b[1] << 8) | ((b[2] >> 5) << 16)
        if spn == 0 or b == b"\xff\xff\xff\xff":
            continue
        dtcs.append(Dtc(spn, b[2] & 0x1F, b[3] >> 7, b[3] & 0x7F))
    return Dm1(lamps, flash, tuple(dtcs))


def _pairs(byte: int) -> tuple[int, int, int, int]:
    return (byte >> 6) & 3, (byte >> 4) & 3, (byte >> 2) & 3, byte & 3


def dm1_signals(dm1: Dm1, source_address: int, *,
                labels: bool = True) -> list[dict[str, int | str]]:
    """One signal set per active DTC (one without DTC fields when none is active), each with
    the lamps, the sender and the number of active DTCs; names without the `PREFIX`, which
    the decoder puts in front as a message name. Lamp states are labels (`LAMP_STATUS`,
    `LAMP_FLASH`) unless `labels` is false, then their 2-bit codes."""
    common: dict[str, int | str] = {
        "SourceAddress": source_address,
        "ActiveDTCs": len(dm1.dtcs),
    }
    for name, status, flash in zip(LAMPS, dm1.lamps, dm1.flash, strict=True):
        common[name] = LAMP_STATUS[status] if labels else status
        common[f"{name}Flash"] = LAMP_FLASH[flash] if labels else flash
    if not dm1.dtcs:
        return [common]
    return [
        {
            **common,
            "SPN": dtc.spn,
            "FMI": dtc.fmi,
            "OccurrenceCount": dtc.occurrence_count,
            "ConversionMethod": dtc.conversion_method,
        }
        for dtc in dm1.dtcs
    ]
