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
from itertools import accumulate, chain, compress
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
_FLOAT, _INT, _BOOL, _STR = range(4)
_CODE = {float: _FLOAT, int: _INT, bool: _BOOL, str: _STR}
_NUMBERS = {_FLOAT, _INT}
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
        # Column-wise, with no Python step per value: every signal name and value of the part
        # in two flat lists, a type code per value, and each map cut out of them by its codes
        # (compress), its offsets from a running count at the row boundaries: a loop over the
        # values, or nested tuples for pyarrow, cost more (docs/benchmarks.md).
        sigs = [r.signals for r in records]
        bounds = [0, *accumulate(map(len, sigs))]
        names = list(chain.from_iterable(sigs))
        values = list(chain.from_iterable(map(dict.values, sigs)))
        codes = list(map(_CODE.__getitem__, map(type, values)))
        columns: list[Any] = [
            pa.array([r.reading_id for r in records], pa.string()),
            pa.array([r.vehicle_id for r in records], pa.string()),
            pa.array([(r.ts - _EPOCH) // _US for r in records], pa.int64()).cast(_TS),
            pa.array([(r.received_at - _EPOCH) // _US for r in records], pa.int64()).cast(_TS),
        ]
        for wanted, value_type in (
            (_NUMBERS, pa.float64()), ({_INT}, pa.int64()), ({_BOOL}, pa.bool_()),
            ({_STR}, pa.string()),
        ):
            if len(wanted) == 1 and codes.count(next(iter(wanted))) == len(codes):
                mask: list[bool] | None = None  # every value is of this map
            else:
                mask = [c in wanted for c in codes]
            if mask is None:
                keys, vals, offsets = names, values, bounds
            else:
                keys, vals = list(compress(names, mask)), list(compress(values, mask))
                if value_type == pa.float64():  # pyarrow refuses ints a double cannot hold
                    vals = list(map(float, vals))
                running = list(accumulate(mask, initial=0))
                offsets = [running[i] for i in bounds]
            columns.append(pa.MapArray.from_arrays(
                pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                pa.array(vals, value_type)))
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
