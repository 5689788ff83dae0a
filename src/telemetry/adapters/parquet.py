"""Curated parts as Parquet, through pyarrow (the `parquet` extra).

The schema is for query engines (Athena, Trino, Spark, DuckDB), which read it without JSON
functions; see docs/curated.md:

    reading_id      string
    vehicle_id      string
    ts              timestamp[us, UTC]
    received_at     timestamp[us, UTC]
    signals         map<string, double>   every numeric signal (integers too, as doubles)
    signals_int     map<string, int64>    the integer signals again, exactly
    signals_bool    map<string, bool>
    signals_string  map<string, string>

A signal's value sits in the map of its JSON type, so `signals['Vehicle.Speed']` is a number
whichever way the vehicle spelled it (1 or 1.0). The names of a reading's signals come back
grouped by type, not in the order the vehicle sent them, so the format is not lossless for the
raw line's bytes (see `lossless`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry.domain.readings import Record

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "TELEMETRY_CURATED_FORMAT=parquet needs pyarrow: pip install 'fleet-telemetry[parquet]'"
    ) from exc

_TS = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
SCHEMA = pa.schema(
    [
        pa.field("reading_id", pa.string(), nullable=False),
        pa.field("vehicle_id", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("received_at", _TS, nullable=False),
        pa.field("signals", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("signals_int", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("signals_bool", pa.map_(pa.string(), pa.bool_()), nullable=False),
        pa.field("signals_string", pa.map_(pa.string(), pa.string()), nullable=False),
    ]
)


class ParquetFormat:
    extension = "parquet"
    lossless = False

    def __init__(self, compression: str = "zstd") -> None:
        self.compression = compression

    def encode(self, records: Sequence[Record]) -> bytes:
        # Flat keys and values with offsets per map, and timestamps as integers: building
        # nested Python tuples, or datetimes, for pyarrow to walk was three times slower.
        maps: dict[type, tuple[list[str], list[Any], list[int]]] = {
            t: ([], [], [0]) for t in (float, int, bool, str)
        }
        nk, nv, no = maps[float]
        ik, iv, io_ = maps[int]
        bk, bv, bo = maps[bool]
        sk, sv, so = maps[str]
        ts: list[int] = []
        received: list[int] = []
        for r in records:
            ts.append((r.ts - _EPOCH) // _US)
            received.append((r.received_at - _EPOCH) // _US)
            for name, v in r.signals.items():
                t = type(v)
                if t is float:
                    nk.append(name)
                    nv.append(v)
                elif t is int:
                    nk.append(name)
                    nv.append(float(v))
                    ik.append(name)
                    iv.append(v)
                elif t is bool:
                    bk.append(name)
                    bv.append(v)
                else:
                    sk.append(name)
                    sv.append(v)
            no.append(len(nk))
            io_.append(len(ik))
            bo.append(len(bk))
            so.append(len(sk))
        columns: list[Any] = [
            pa.array([r.reading_id for r in records], pa.string()),
            pa.array([r.vehicle_id for r in records], pa.string()),
            pa.array(ts, pa.int64()).cast(_TS),
            pa.array(received, pa.int64()).cast(_TS),
        ]
        for (keys, values, offsets), value_type in zip(
            (maps[float], maps[int], maps[bool], maps[str]),
            (pa.float64(), pa.int64(), pa.bool_(), pa.string()),
            strict=True,
        ):
            columns.append(pa.MapArray.from_arrays(
                pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                pa.array(values, value_type)))
        table = pa.Table.from_arrays(columns, schema=SCHEMA)
        out = io.BytesIO()
        pq.write_table(table, out, compression=self.compression)
        return out.getvalue()

    def decode(self, data: bytes) -> list[Record]:
        table = pq.read_table(io.BytesIO(data))
        cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
        out = []
        for k in range(table.num_rows):
            exact = dict(cols["signals_int"][k])
            signals: dict[str, bool | int | float | str] = {
                name: exact.get(name, v) for name, v in cols["signals"][k]
            }
            signals.update(cols["signals_bool"][k])
            signals.update(cols["signals_string"][k])
            out.append(
                Record(
                    cols["reading_id"][k],
                    cols["vehicle_id"][k],
                    cols["ts"][k].astimezone(UTC),
                    cols["received_at"][k].astimezone(UTC),
                    signals,
                )
            )
        return out
