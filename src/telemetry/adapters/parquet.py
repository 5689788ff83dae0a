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
from datetime import UTC
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
        nums: list[list[tuple[str, float]]] = []
        ints: list[list[tuple[str, int]]] = []
        bools: list[list[tuple[str, bool]]] = []
        strs: list[list[tuple[str, str]]] = []
        for r in records:
            n: list[tuple[str, float]] = []
            i: list[tuple[str, int]] = []
            b: list[tuple[str, bool]] = []
            s: list[tuple[str, str]] = []
            for name, v in r.signals.items():
                t = type(v)
                if t is float:
                    n.append((name, v))  # type: ignore[arg-type]
                elif t is int:
                    n.append((name, float(v)))
                    i.append((name, v))  # type: ignore[arg-type]
                elif t is bool:
                    b.append((name, v))  # type: ignore[arg-type]
                else:
                    s.append((name, v))  # type: ignore[arg-type]
            nums.append(n)
            ints.append(i)
            bools.append(b)
            strs.append(s)
        columns: list[Any] = [
            pa.array([r.reading_id for r in records], pa.string()),
            pa.array([r.vehicle_id for r in records], pa.string()),
            pa.array([r.ts for r in records], _TS),
            pa.array([r.received_at for r in records], _TS),
            pa.array(nums, SCHEMA.field("signals").type),
            pa.array(ints, SCHEMA.field("signals_int").type),
            pa.array(bools, SCHEMA.field("signals_bool").type),
            pa.array(strs, SCHEMA.field("signals_string").type),
        ]
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
