"""Real CAN logs as readings: python-can reads the log, cantools decodes each message with a DBC.

Pipeline, one generator from file to readings (`replay_readings`):

    read_frames (candump/ASC/BLF/TRC/MF4, .gz too)
      -> FrameDecoder.decode: J1939 TP and ISO-TP frames to their reassemblers
         (`can_transport`), which hand out whole messages; then the DBC message for the id
         (11-bit exact; 29-bit J1939 by PGN), else the J1939-73 DM1 decoder (`j1939_dm1`) or
         the SAE J1979 decoder for OBD2 replies; then the signal map (rename to VSS, convert
         units) and the reading rules (finite numbers, short strings, valid names)
      -> the time shift (--time) and one reading per message (per DTC for a DM1), split at
         the signal limit.

Nothing about one bad frame is fatal: unknown ids, decode errors and invalid values are counted
in `DecodeStats` and skipped, because a single invalid reading would make the service reject
the whole request it travels in.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import can
import cantools
import yaml
from cantools.database.can import Database as CanDatabase
from cantools.database.can import Message as DbcMessage
from cantools.database.namedsignalvalue import NamedSignalValue

from telemetry.adapters import j1939_dm1 as dm1
from telemetry.adapters.can_transport import (
    SINGLE_FRAME,
    IsoTpTransport,
    J1939Transport,
    is_j1939_transport,
    isotp_frame_type,
)
from telemetry.domain.readings import (
    MAX_SIGNAL_NAME,
    MAX_STRING_VALUE,
    MIN_TS,
    SIGNAL_NAME_PATTERN,
    canonical_ts,
)

Value = bool | int | float | str
Signals = dict[str, Value]

# J1939: priority (bits 26-28) and source address (bits 0-7) vary by sender, the PGN in between
# names the message. The DBC's own source address and priority are placeholders.
J1939_PGN_MASK = 0x03FFFF00
# The contract's default signal limit; a longer frame is split into several readings.
MAX_SIGNALS = 256
MIN_EPOCH = MIN_TS.timestamp()
OBD2_MESSAGE = "OBD2"

_SIGNAL_RE = re.compile(SIGNAL_NAME_PATTERN)
_INT64 = (-(2**63), 2**63 - 1)


class CanLogError(ValueError):
    """A log, DBC or map file that cannot be used; the message says which and why."""


class RelativeClockError(CanLogError):
    """`--time original` on a log whose clock is not wall-clock time."""


# ------------------------------------------------------------------ reading logs

# python-can's own LogReader only handles `name.ext.gz` with exactly two suffixes, so
# `css-car.candump.log.gz` fails there; the dispatch is done here instead.
_READERS: dict[str, type[can.io.generic.MessageReader]] = {
    ".log": can.CanutilsLogReader,
    ".candump": can.CanutilsLogReader,
    ".asc": can.ASCReader,
    ".blf": can.BLFReader,
    ".trc": can.TRCReader,
    ".mf4": can.MF4Reader,  # ASAM MDF4, finalized or not (needs asammdf, in the `can` extra)
}
LOG_FORMATS = tuple(sorted(_READERS))


def _log_format(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in _READERS:
        raise CanLogError(
            f"{path}: unknown log format {fmt or '(no suffix)'!r}; expected one of "
            f"{', '.join(LOG_FORMATS)} (optionally .gz)"
        )
    return fmt, compressed


def read_frames(path: str | Path) -> Generator[can.Message, None, None]:
    """Every message of a candump (.log), ASC, BLF, TRC or MF4 log, gzip-compressed or not."""
    p = Path(path)
    fmt, compressed = _log_format(p)
    if not p.is_file():
        raise CanLogError(f"{p}: no such file")
    reader_cls = _READERS[fmt]
    source: Any = p
    if compressed:
        source = gzip.open(p, "rb" if fmt == ".blf" else "rt")  # noqa: SIM115 - the reader closes it
    # ASC timestamps are relative to the header's date unless asked otherwise.
    kwargs: dict[str, Any] = {"relative_timestamp": False} if fmt == ".asc" else {}
    n = 0
    try:
        with reader_cls(source, **kwargs) as reader:
            for msg in reader:
                n += 1
                yield msg
    except Exception as exc:  # readers raise anything from struct.error to EOFError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CanLogError(f"{p}: unreadable after {n} frames: {first_line}") from exc


def check_log(path: str | Path) -> None:
    """Refuse, before anything is decoded or sent, a log that holds no CAN frame at all (an
    MF4 file of measured signals, say, without CAN bus logging)."""
    frames = read_frames(path)
    try:
        next(frames)
    except StopIteration:
        raise _no_frames(path) from None
    finally:
        frames.close()


def _no_frames(path: str | Path) -> CanLogError:
    what = (" (no CAN data, error or remote frame channel group)"
            if Path(path).suffix.lower() == ".mf4" else "")
    return CanLogError(f"{path}: the log holds no CAN frame{what}")


class LogSpan(NamedTuple):
    frames: int
    first: float  # timestamp of the first frame in file order
    last: float  # the latest timestamp anywhere in the file


def scan_log(path: str | Path) -> LogSpan:
    """One pass over the log for its frame count and clock range (for `now` and progress)."""
    n, first, last = 0, math.nan, -math.inf
    for msg in read_frames(path):
        if n == 0:
            first = msg.timestamp
        last = max(last, msg.timestamp)
        n += 1
    if n == 0:
        raise _no_frames(path)
    return LogSpan(n, first, last)


# ------------------------------------------------------------------ OBD2 (SAE J1979)


class _Pid(NamedTuple):
    name: str
    size: int
    formula: Callable[[bytes], int | float]


# Mode 01 PIDs by SAE J1979, with A, B the data bytes after the PID. The car log carries
# 04, 05, 0B, 0C, 0D, 11, 2F, 33, 42 and 62.
OBD2_PIDS: dict[int, _Pid] = {
    0x04: _Pid("EngineLoad", 1, lambda d: d[0] * 100 / 255),  # %
    0x05: _Pid("CoolantTemperature", 1, lambda d: d[0] - 40),  # degC
    0x0B: _Pid("IntakeManifoldPressure", 1, lambda d: d[0]),  # kPa
    0x0C: _Pid("EngineSpeed", 2, lambda d: (256 * d[0] + d[1]) / 4),  # rpm
    0x0D: _Pid("VehicleSpeed", 1, lambda d: d[0]),  # km/h
    0x0F: _Pid("IntakeAirTemperature", 1, lambda d: d[0] - 40),  # degC
    0x10: _Pid("MassAirFlow", 2, lambda d: (256 * d[0] + d[1]) / 100),  # g/s
    0x11: _Pid("ThrottlePosition", 1, lambda d: d[0] * 100 / 255),  # %
    0x1F: _Pid("RunTimeSinceStart", 2, lambda d: 256 * d[0] + d[1]),  # s
    0x2F: _Pid("FuelLevel", 1, lambda d: d[0] * 100 / 255),  # %
    0x33: _Pid("BarometricPressure", 1, lambda d: d[0]),  # kPa
    0x42: _Pid("ControlModuleVoltage", 2, lambda d: (256 * d[0] + d[1]) / 1000),  # V
    0x46: _Pid("AmbientAirTemperature", 1, lambda d: d[0] - 40),  # degC
    0x5C: _Pid("EngineOilTemperature", 1, lambda d: d[0] - 40),  # degC
    0x62: _Pid("ActualEngineTorque", 1, lambda d: d[0] - 125),  # % of reference torque
}


def is_obd2_reply(arbitration_id: int, is_extended: bool) -> bool:
    """ECU replies to an OBD2 tester: 0x7E8-0x7EF, or 29-bit 0x18DAF1xx (ISO 15765-4)."""
    if is_extended:
        return arbitration_id & 0x1FFFFF00 == 0x18DAF100
    return 0x7E8 <= arbitration_id <= 0x7EF


def decode_obd2(data: bytes) -> dict[str, Value]:
    """The values of one ISO-TP single frame: `len 41 PID A [B ...] [PID A ...]` (or mode 09).

    Empty for anything else (first and consecutive frames, negative responses, unknown PIDs).
    """
    if len(data) < 3 or data[0] >> 4 != 0:  # high nibble 0: ISO-TP single frame
        return {}
    length = data[0] & 0x0F
    if length < 2 or length > len(data) - 1:
        return {}
    return decode_obd2_payload(data[1 : 1 + length])


def decode_obd2_payload(payload: bytes) -> dict[str, Value]:
    """The values of a whole OBD2 reply (ISO-TP payload, single frame or reassembled).

    Mode 01 (`41 PID A [B ...] [PID A ...]`, several PIDs in one reply) by the J1979 formulas;
    mode 09 PID 02 (`49 02 01` + 17 characters) as `VIN`. Empty for anything else: negative
    responses, other modes, and from an unknown PID on (without its length the rest of the
    reply cannot be parsed).
    """
    if len(payload) >= 2 and payload[0] == 0x49 and payload[1] == 0x02:
        vin = payload[3:].strip(b"\x00 ").decode("ascii", "replace")
        return {"VIN": vin} if len(vin) == 17 and vin.isalnum() else {}
    if len(payload) < 2 or payload[0] != 0x41:
        return {}
    out: dict[str, Value] = {}
    i = 1
    while i < len(payload):
        pid = OBD2_PIDS.get(payload[i])
        if pid is None or i + 1 + pid.size > len(payload):
            break
        out[pid.name] = pid.formula(payload[i + 1 : i + 1 + pid.size])
        i += 1 + pid.size
    return out


# ------------------------------------------------------------------ signal maps

# Named unit conversions: value * factor + offset.
CONVERSIONS: dict[str, tuple[float, float]] = {
    "m/s->km/h": (3.6, 0.0),
    "km/h->m/s": (1 / 3.6, 0.0),
    "mph->km/h": (1.609344, 0.0),
    "km/h->mph": (1 / 1.609344, 0.0),
    "km->m": (1000.0, 0.0),
    "m->km": (0.001, 0.0),
    "kPa->hPa": (10.0, 0.0),
    "hPa->kPa": (0.1, 0.0),
    "bar->kPa": (100.0, 0.0),
    "kPa->bar": (0.01, 0.0),
    "degF->degC": (5 / 9, -160 / 9),
    "degC->degF": (9 / 5, 32.0),
    "rad->deg": (180 / math.pi, 0.0),
    "deg->rad": (math.pi / 180, 0.0),
}
# `<Message>.<Signal>`; the built-in decoders' message names have dots (`J1939.DM1`).
_SOURCE_RE = re.compile(r"^[^.\s]+(\.[^.\s]+)+$")
_ENTRY_KEYS = {"name", "convert", "factor", "offset", "round", "values"}


@dataclass(frozen=True, slots=True)
class MapEntry:
    """Where one DBC signal goes: its new name and how its value changes on the way."""

    name: str
    factor: float = 1.0
    offset: float = 0.0
    ndigits: int | None = None
    # Label (or raw value) -> new value; a value not listed is dropped.
    values: Mapping[Any, Value] | None = None

    @property
    def numeric(self) -> bool:
        return self.factor != 1.0 or self.offset != 0.0 or self.ndigits is not None


@dataclass(frozen=True)
class SignalMap:
    """`<Message>.<Signal>` -> MapEntry, from a YAML or JSON file (see docs/replay.md)."""

    entries: Mapping[str, MapEntry]
    keep_unmapped: bool = True

    @classmethod
    def load(cls, path: str | Path) -> SignalMap:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            obj = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CanLogError(f"map {p}: {exc}") from exc
        return cls.from_obj(obj, source=str(p))

    @classmethod
    def from_obj(cls, obj: Any, source: str = "map") -> SignalMap:
        def fail(msg: str) -> CanLogError:
            return CanLogError(f"{source}: {msg}")

        if not isinstance(obj, dict) or not isinstance(obj.get("signals"), dict):
            raise fail("expected a mapping with a `signals:` mapping")
        unknown = set(obj) - {"signals", "unmapped", "description"}
        if unknown:
            raise fail(f"unknown top-level keys {sorted(unknown)}")
        unmapped = obj.get("unmapped", "keep")
        if unmapped not in ("keep", "drop"):
            raise fail("`unmapped` must be `keep` or `drop`")
        entries: dict[str, MapEntry] = {}
        seen: dict[str, str] = {}
        for src, spec in obj["signals"].items():
            if not isinstance(src, str) or not _SOURCE_RE.match(src):
                raise fail(f"source {src!r} is not `<Message>.<Signal>`")
            entry = _parse_entry(spec, src, fail)
            # Two sources on one name would interleave two sensors in one series (the car's
            # GNSS and OBD2 speeds, say): refuse rather than guess which one is meant.
            if entry.name in seen:
                raise fail(f"{src} and {seen[entry.name]} both map to {entry.name}")
            seen[entry.name] = src
            entries[src] = entry
        return cls(entries, keep_unmapped=unmapped == "keep")

    def targets(self) -> list[str]:
        return [e.name for e in self.entries.values()]


def _parse_entry(spec: Any, src: str, fail_map: Callable[[str], CanLogError]) -> MapEntry:
    def fail(msg: str) -> CanLogError:
        return fail_map(f"{src}: {msg}")

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise fail("expected a VSS name or a mapping with `name`")
    unknown = set(spec) - _ENTRY_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")
    name = spec["name"]
    if not isinstance(name, str) or len(name) > MAX_SIGNAL_NAME or not _SIGNAL_RE.search(name):
        raise fail(f"name {name!r} must match {SIGNAL_NAME_PATTERN}, <= {MAX_SIGNAL_NAME} chars")
    factor, offset = 1.0, 0.0
    if "convert" in spec:
        if "factor" in spec or "offset" in spec:
            raise fail("use either `convert` or `factor`/`offset`")
        if spec["convert"] not in CONVERSIONS:
            raise fail(f"unknown conversion {spec['convert']!r}; known: {sorted(CONVERSIONS)}")
        factor, offset = CONVERSIONS[spec["convert"]]
    else:
        factor, offset = spec.get("factor", 1.0), spec.get("offset", 0.0)
        for v in (factor, offset):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise fail("`factor` and `offset` must be finite numbers")
    ndigits = spec.get("round")
    if ndigits is not None and (isinstance(ndigits, bool) or not isinstance(ndigits, int)):
        raise fail("`round` must be an integer (decimal digits)")
    values = spec.get("values")
    if values is not None:
        if set(spec) & {"convert", "factor", "offset", "round"}:
            raise fail("`values` replaces the value: no `convert`, `factor`, `offset`, `round`")
        if not isinstance(values, dict) or not values:
            raise fail("`values` must be a non-empty mapping")
        for v in values.values():
            if not isinstance(v, bool | int | float | str):
                raise fail("`values` must map to numbers, bools or strings")
    return MapEntry(name, float(factor), float(offset), ndigits, values)


# ------------------------------------------------------------------ decoding


@dataclass
class DecodeStats:
    """What happened to every frame, every message and every dropped value.

    Frames that carry part of a multi-frame transfer (J1939 TP.CM/TP.DT, ISO-TP first,
    consecutive and flow-control frames) are `transport_frames`; the rest are messages, and so
    is each message `reassembled` from them:

    frames - transport_frames + reassembled
        == decoded + unknown + decode_errors + obd2_unsupported + no_signals + non_data + bad_ts
    """

    frames: int = 0
    decoded: int = 0  # messages that produced a reading
    readings: int = 0  # readings produced (> decoded when a message is split, or DM1 DTCs)
    obd2: int = 0  # of `decoded`: by the J1979 decoder
    dm1: int = 0  # of `decoded`: by the J1939-73 DM1 decoder
    unknown: int = 0  # id neither in the DBC nor an OBD2 reply
    decode_errors: int = 0  # id in the DBC, payload not decodable (length, multiplexer)
    obd2_unsupported: int = 0  # OBD2 replies holding no mode 01 value we know
    no_signals: int = 0  # decoded, but every value was dropped or unmapped
    non_data: int = 0  # error and remote frames
    bad_ts: int = 0  # shifted before 2000-01-01
    transport_frames: int = 0  # frames of J1939 TP or ISO-TP multi-frame transfers
    reassembled: int = 0  # messages rebuilt from them
    stray_frames: int = 0  # of `transport_frames`: of no open transfer
    transfers_dropped: Counter[str] = field(default_factory=Counter)  # by reason
    unknown_ids: Counter[str] = field(default_factory=Counter)
    errors_by_message: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)  # values, by reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "decoded": self.decoded, "readings": self.readings,
            "obd2": self.obd2, "dm1": self.dm1, "unknown": self.unknown,
            "decode_errors": self.decode_errors,
            "obd2_unsupported": self.obd2_unsupported, "no_signals": self.no_signals,
            "non_data": self.non_data, "bad_ts": self.bad_ts,
            "transport_frames": self.transport_frames, "reassembled": self.reassembled,
            "stray_frames": self.stray_frames,
            "transfers_dropped": dict(self.transfers_dropped),
            "unknown_ids": dict(self.unknown_ids.most_common(10)),
            "errors_by_message": dict(self.errors_by_message),
            "dropped": dict(self.dropped),
        }


_Lookup = (
    tuple[Literal["dbc"], DbcMessage]
    | tuple[Literal["obd2"], None]
    | tuple[Literal["dm1"], None]
    | None
)
# ISO-TP reply ids by default: OBD2 ECUs answering a tester (ISO 15765-4), 11- and 29-bit.
DEFAULT_ISOTP_IDS: tuple[tuple[int, int], ...] = ((0x7E8, 0x7EF), (0x18DAF100, 0x18DAF1FF))
DM1_MESSAGE = dm1.PREFIX


def parse_id_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """`0x7E8-0x7EF,0x7BB` -> ((0x7E8, 0x7EF), (0x7BB, 0x7BB)); `none` or `` -> ()."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part or part.lower() == "none":
            continue
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo, hi = int(lo_s, 0), int(hi_s if dash else lo_s, 0)
        except ValueError:
            raise CanLogError(f"{part!r}: expected an id (0x7E8) or a range (0x7E8-0x7EF)"
                              ) from None
        if not 0 <= lo <= hi <= 0x1FFFFFFF or (lo <= 0x7FF < hi):
            raise CanLogError(f"{part!r}: ids are 0-0x7FF (11-bit) or up to 0x1FFFFFFF "
                              "(29-bit), low to high, a range within one of the two")
        out.append((lo, hi))
    return tuple(out)


class FrameDecoder:
    """Frame -> signals, with the transport reassemblers, the DBC, the OBD2 and DM1 decoders
    and the signal map. Counts in `stats`.

    Choice values (DBC `VAL_` tables) become their labels ("Valid", "3D-fix") unless
    `raw_choices`, so the lake holds the meaning and not a DBC-specific code.

    `isotp_ids`: id ranges whose frames are ISO-TP (default `DEFAULT_ISOTP_IDS`), to which the
    DBC's messages longer than a classic frame are added. `j1939`: reassemble J1939 transfers
    and decode DM1 (default: when the DBC has J1939 messages, or `pgn_match`).
    """

    def __init__(
        self,
        db: CanDatabase,
        *,
        signal_map: SignalMap | None = None,
        obd2: bool = True,
        raw_choices: bool = False,
        pgn_match: bool | None = None,
        isotp_ids: Iterable[tuple[int, int]] | None = None,
        j1939: bool | None = None,
    ) -> None:
        self.db = db
        self.map = signal_map
        self.obd2 = obd2
        self.decode_choices = not raw_choices
        self.stats = DecodeStats()
        self._std: dict[int, DbcMessage] = {}
        self._ext: dict[int, DbcMessage] = {}
        self._pgn: dict[int, DbcMessage] = {}
        db_j1939 = _attr(getattr(db, "dbc", None), "ProtocolType") == "J1939"
        ranges = list(DEFAULT_ISOTP_IDS if isotp_ids is None else isotp_ids)
        for m in db.messages:
            by_pgn = m.is_extended_frame and (
                pgn_match or (pgn_match is None and (m.protocol == "j1939" or db_j1939)))
            if not m.is_extended_frame:
                self._std[m.frame_id] = m
            elif by_pgn:
                self._pgn.setdefault(m.frame_id & J1939_PGN_MASK, m)
            else:
                self._ext[m.frame_id] = m
            # Longer than a classic frame: only a transport protocol carries it (CSS
            # Electronics' convention for UDS DBC files); J1939 ones come by TP.CM/TP.DT.
            if m.length > 8 and not m.is_fd and not by_pgn:
                ranges.append((m.frame_id, m.frame_id))
        self._isotp_ranges = tuple((lo, hi, hi > 0x7FF) for lo, hi in ranges)
        self._isotp_cache: dict[tuple[int, bool], bool] = {}
        self.j1939 = (bool(self._pgn) or bool(pgn_match)) if j1939 is None else j1939
        self.j1939_tp = J1939Transport() if self.j1939 else None
        self.isotp = IsoTpTransport()
        self._lookup_cache: dict[tuple[int, bool], _Lookup] = {}
        self._plans: dict[str, dict[str, _Plan]] = {}

    @classmethod
    def from_files(
        cls, dbc: str | Path, *, map_path: str | Path | None = None, **kwargs: Any
    ) -> FrameDecoder:
        return cls(
            load_dbc(dbc),
            signal_map=SignalMap.load(map_path) if map_path else None,
            **kwargs,
        )

    def is_isotp(self, arbitration_id: int, is_extended: bool) -> bool:
        key = (arbitration_id, is_extended)
        found = self._isotp_cache.get(key)
        if found is None:
            found = self._isotp_cache[key] = any(
                lo <= arbitration_id <= hi and ext == is_extended
                for lo, hi, ext in self._isotp_ranges
            )
        return found

    def _lookup(self, arbitration_id: int, is_extended: bool) -> _Lookup:
        key = (arbitration_id, is_extended)
        try:
            return self._lookup_cache[key]
        except KeyError:
            pass
        found: _Lookup = None
        m = None
        if is_extended:
            # J1939-73's layout, any number of DTCs: more than a DBC's fixed positions can say.
            if self.j1939 and dm1.is_dm1(arbitration_id):
                found = ("dm1", None)
            m = self._ext.get(arbitration_id)
            if m is None:
                m = self._pgn.get(arbitration_id & J1939_PGN_MASK)
        else:
            m = self._std.get(arbitration_id)
        if found is not None:
            pass
        elif m is not None:
            found = ("dbc", m)
        elif self.obd2 and is_obd2_reply(arbitration_id, is_extended):
            found = ("obd2", None)
        self._lookup_cache[key] = found
        return found

    def decode(self, msg: can.Message) -> list[Signals]:
        """The signals of what one frame completes (after the map and the reading rules): one
        set per reading; none for a fragment or a frame skipped (counted)."""
        st = self.stats
        st.frames += 1
        if msg.is_error_frame or msg.is_remote_frame:
            st.non_data += 1
            return []
        arb, ext, data = msg.arbitration_id, msg.is_extended_id, bytes(msg.data)
        if self.j1939_tp is not None and ext and is_j1939_transport(arb):
            st.transport_frames += 1
            done = self.j1939_tp.feed(msg.timestamp, msg.channel, arb, data)
            self._collect()
            if done is None:
                return []
            st.reassembled += 1
            return self._decode(done.arbitration_id, True, done.data, "tp")
        if self.is_isotp(arb, ext):
            kind = isotp_frame_type(data)
            if kind is not None:
                if kind != SINGLE_FRAME:
                    st.transport_frames += 1
                done = self.isotp.feed(msg.timestamp, msg.channel, arb, ext, data)
                self._collect()
                if done is None:
                    return []
                if kind != SINGLE_FRAME:
                    st.reassembled += 1
                return self._decode(arb, ext, done.data, "isotp")
        return self._decode(arb, ext, data, "")

    def finish(self, ts: float) -> None:
        """The log ended at `ts`: transfers still open are dropped and counted."""
        if self.j1939_tp is not None:
            self.j1939_tp.close(ts)
        self.isotp.close(ts)
        self._collect()

    def _collect(self) -> None:
        st = self.stats
        st.transfers_dropped = Counter(self.isotp.dropped)
        st.stray_frames = self.isotp.stray
        if self.j1939_tp is not None:
            st.transfers_dropped.update(self.j1939_tp.dropped)
            st.stray_frames += self.j1939_tp.stray

    def _decode(self, arb: int, ext: bool, data: bytes,
                transport: Literal["", "tp", "isotp"]) -> list[Signals]:
        """One message: a frame, or the payload a transport protocol reassembled."""
        st = self.stats
        found = self._lookup(arb, ext)
        if found is None:
            st.unknown += 1
            width = 8 if ext else 3
            suffix = {"": "", "tp": " (J1939 TP)", "isotp": " (ISO-TP)"}[transport]
            st.unknown_ids[f"0x{arb:0{width}X}{suffix}"] += 1
            return []
        raws: list[Mapping[str, Any]]
        if found[0] == "obd2":
            raw_obd2 = decode_obd2_payload(data) if transport else decode_obd2(data)
            if not raw_obd2:
                st.obd2_unsupported += 1
                return []
            raws, message_name = [raw_obd2], OBD2_MESSAGE
        elif found[0] == "dm1":
            message_name = DM1_MESSAGE
            parsed = dm1.decode_dm1(data)
            if parsed is None:
                self._decode_error(message_name, f"DM1 of {len(data)} bytes, 2 at least")
                return []
            raws = list(dm1.dm1_signals(parsed, arb & 0xFF, labels=self.decode_choices))
        else:
            dbc_msg = found[1]
            message_name = dbc_msg.name
            if transport == "isotp":
                # CSS Electronics' convention: the payload from byte 1 of the first frame, so
                # the low byte of the length comes first and the service id is byte 1.
                data = bytes([len(data) & 0xFF]) + data
            try:
                # A reassembled message is as long as its sender made it; a signal the payload
                # does not reach is absent, not an error.
                decoded = dbc_msg.decode(data, decode_choices=self.decode_choices,
                                         allow_truncated=bool(transport))
                if not isinstance(decoded, dict):  # AUTOSAR container messages
                    raise TypeError("container messages are not supported")
            except Exception as exc:  # any failure (length, multiplexer) is counted, never fatal
                self._decode_error(message_name, f"{type(exc).__name__}: {exc}")
                return []
            raws = [decoded]
        outs = [out for out in (self._apply(message_name, raw) for raw in raws) if out]
        if not outs:
            st.no_signals += 1
            return []
        st.decoded += 1
        if found[0] == "obd2":
            st.obd2 += 1
        elif found[0] == "dm1":
            st.dm1 += 1
        return outs

    def _decode_error(self, message_name: str, error: str) -> None:
        st = self.stats
        st.decode_errors += 1
        st.errors_by_message[message_name] += 1
        st.first_error.setdefault(message_name, error[:200])

    def _plan(self, message: str, signal: str) -> _Plan:
        source = f"{message}.{signal}"
        entry = self.map.entries.get(source) if self.map else None
        if entry is not None:
            return _Plan(entry.name, entry)
        if self.map is not None and not self.map.keep_unmapped:
            return _Plan(None, None, "unmapped_signal")
        if len(source) <= MAX_SIGNAL_NAME and _SIGNAL_RE.search(source):
            return _Plan(source, None)
        return _Plan(None, None, "bad_name")

    def _apply(self, message: str, raw: Mapping[str, Any]) -> Signals:
        # The hot loop, once per decoded value: plans are cached per message, and the
        # common case, a plain finite float under its DBC name, takes the first branch.
        plans = self._plans.get(message)
        if plans is None:
            plans = self._plans[message] = {}
        out: Signals = {}
        for signal, value in raw.items():
            plan = plans.get(signal)
            if plan is None:
                plan = plans[signal] = self._plan(message, signal)
            name, entry, reason = plan
            if entry is None and name is not None and type(value) is float:
                if value - value == 0.0:  # false for NaN and +-inf
                    out[name] = value
                else:
                    self.stats.dropped["not_finite"] += 1
                continue
            if name is None:
                self.stats.dropped[reason] += 1
                continue
            v: Any = value.name if isinstance(value, NamedSignalValue) else value
            if entry is not None:
                if entry.values is not None:
                    v = _lookup_value(entry.values, v)
                    if v is None:
                        self.stats.dropped["unmapped_value"] += 1
                        continue
                elif entry.numeric:
                    # A J1939 "not available" label, say, must not land in a numeric series.
                    if isinstance(v, bool) or not isinstance(v, int | float):
                        self.stats.dropped["not_numeric"] += 1
                        continue
                    v = v * entry.factor + entry.offset
                    if entry.ndigits is not None and math.isfinite(v):
                        v = round(v, entry.ndigits)
            bad = _invalid(v)
            if bad:
                self.stats.dropped[bad] += 1
                continue
            out[name] = v
        return out


class _Plan(NamedTuple):
    name: str | None  # None: every value of this signal is dropped, for `reason`
    entry: MapEntry | None
    reason: str = ""


def _lookup_value(values: Mapping[Any, Value], v: Any) -> Value | None:
    if v in values:
        return values[v]
    # JSON keys are always strings; let `"1": ...` match a raw choice value 1.
    return values.get(str(v)) if not isinstance(v, str) else None


def _invalid(v: Any) -> str | None:
    """Why a value breaks the reading rules (contract section 2), or None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return None if _INT64[0] <= v <= _INT64[1] else "int_out_of_range"
    if isinstance(v, float):
        return None if math.isfinite(v) else "not_finite"
    if isinstance(v, str):
        return None if len(v) <= MAX_STRING_VALUE else "string_too_long"
    return "bad_type"


def _attr(dbc_specifics: Any, name: str) -> Any:
    attrs = getattr(dbc_specifics, "attributes", None) or {}
    a = attrs.get(name)
    return getattr(a, "value", None)


def load_dbc(path: str | Path) -> CanDatabase:
    """A CAN database (DBC, KCD, SYM or ARXML). Not strict: real DBCs often overlap signals."""
    try:
        db = cantools.database.load_file(str(path), strict=False)
    except Exception as exc:  # cantools raises many types; all mean "unusable"
        raise CanLogError(f"DBC {path}: {exc}") from exc
    if not isinstance(db, CanDatabase):
        raise CanLogError(f"DBC {path}: not a CAN database")
    return db


# ------------------------------------------------------------------ readings


class TimedReading(NamedTuple):
    log_ts: float  # the frame's own clock, for pacing
    reading: dict[str, Any]


TimeMode = Literal["original", "now"] | datetime


def replay_readings(
    log: str | Path,
    decoder: FrameDecoder,
    vehicle_id: str,
    time: TimeMode = "original",
    *,
    now: datetime | None = None,
    span: LogSpan | None = None,
) -> Iterator[TimedReading]:
    """One reading per decoded message of `log` (a frame, or a message reassembled from a
    transport protocol's frames, timed by its last frame; a DM1 gives one per DTC), `ts` from
    the message, shifted per `time`.

    `original` keeps the log clock (RelativeClockError if the log starts before 2000, i.e. it
    counts seconds since boot); `now` shifts so the latest frame is `now` (one extra pass over
    the log unless `span` is given); a datetime shifts the first frame to that instant.
    """
    offset: float | None = None
    if time == "now":
        span = span or scan_log(log)
        offset = (now or datetime.now(UTC)).timestamp() - span.last
    elif time != "original" and not isinstance(time, datetime):
        raise CanLogError(f"time must be 'original', 'now' or a datetime, not {time!r}")
    stats = decoder.stats
    fmt_ts = _TsFormatter()
    last = -math.inf
    for msg in read_frames(log):
        t = msg.timestamp
        if offset is None:
            if isinstance(time, datetime):
                offset = time.timestamp() - t
            elif t < MIN_EPOCH:
                raise RelativeClockError(
                    f"{log}: the first frame is at {t:.3f} s, before 2000-01-01: the log counts "
                    "time since the logger started, not wall-clock time; use --time now or "
                    "--time <RFC 3339 start>"
                )
            else:
                offset = 0.0
        shifted = t + offset
        if shifted < MIN_EPOCH:  # a stray frame far before the rest; the service would refuse it
            stats.frames += 1
            stats.bad_ts += 1
            continue
        last = max(last, t)
        messages = decoder.decode(msg)
        if not messages:
            continue
        ts = fmt_ts(shifted)
        for signals in messages:
            for chunk in _chunks(signals):
                stats.readings += 1
                yield TimedReading(t, {"vehicle_id": vehicle_id, "ts": ts, "signals": chunk})
    if last > -math.inf:
        decoder.finish(last)


class _TsFormatter:
    """`canonical_ts` of a float epoch, with the `YYYY-MM-DDTHH:MM:SS` part cached per second
    rather than a datetime formatted per frame (docs/benchmarks.md)."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, epoch: float) -> str:
        sec, us = divmod(round(epoch * 1_000_000), 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = canonical_ts(datetime.fromtimestamp(sec, UTC))[:19]
        return f"{self._prefix}.{us:06d}Z"


def _chunks(signals: Signals) -> Iterable[Signals]:
    if len(signals) <= MAX_SIGNALS:
        return (signals,)
    items = list(signals.items())
    return (dict(items[i : i + MAX_SIGNALS]) for i in range(0, len(items), MAX_SIGNALS))
