"""DuckDB over the curated lake, Parquet and gzip JSON Lines, gives the per-vehicle-hour counts
and statistics of the aggregates (the queries of docs/curated.md)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.parquet import ParquetFormat
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import decode_aggregate_lines
from telemetry.domain.curation import CuratedFormat, CurateHours, JsonLinesGzip
from tests.integration.test_curation import H2, lake_with_copies
from tests.support.fakes import FakeClock

duckdb = pytest.importorskip("duckdb")

QUERIES = {
    "parquet": """
        SELECT vehicle_id, date_trunc('hour', ts) AS hour_start,
               count(*) AS readings, min(ts) AS first_ts, max(ts) AS last_ts,
               count(signals['Vehicle.Speed']) AS n, min(signals['Vehicle.Speed']) AS lo,
               max(signals['Vehicle.Speed']) AS hi, avg(signals['Vehicle.Speed']) AS mean
        FROM read_parquet('{root}/curated/*/*/*/*/*.parquet', hive_partitioning = true)
        GROUP BY ALL ORDER BY hour_start, vehicle_id""",
    "jsonl": """
        SELECT vehicle_id, date_trunc('hour', ts) AS hour_start,
               count(*) AS readings, min(ts) AS first_ts, max(ts) AS last_ts,
               count(signals."Vehicle.Speed") AS n, min(signals."Vehicle.Speed") AS lo,
               max(signals."Vehicle.Speed") AS hi, avg(signals."Vehicle.Speed") AS mean
        FROM read_json('{root}/curated/*/*/*/*/*.jsonl.gz', format = 'newline_delimited',
                       hive_partitioning = true,
                       columns = {{vehicle_id: 'VARCHAR', ts: 'TIMESTAMPTZ',
                                   signals: 'STRUCT("Vehicle.Speed" DOUBLE)'}})
        GROUP BY ALL ORDER BY hour_start, vehicle_id""",
}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_duckdb_over_the_curated_hours_agrees_with_the_aggregates(
    tmp_path: Path, fmt: str
) -> None:
    root = tmp_path / "lake"
    storage = FilesystemStorage(root)
    # No id used by two vehicles: the aggregation still dedupes by reading_id alone here.
    lake_with_copies(storage, random.Random(13), shared_id=False)
    chosen: CuratedFormat = ParquetFormat() if fmt == "parquet" else JsonLinesGzip()
    service = AggregateHours(storage)
    raw = service.raw_hours()
    aggregates = service.changed()
    curate = CurateHours(storage, FakeClock(H2 + timedelta(hours=2)), chosen, part_bytes=9000)
    assert len(curate.changed(raw)) == 2
    want = []
    for a in aggregates:
        for line in decode_aggregate_lines(storage.get(a.key)):
            speed = line.signals["Vehicle.Speed"]
            want.append((line.vehicle_id, line.hour_start, line.readings, line.first_ts,
                         line.last_ts, speed["count"], speed["min"], speed["max"], speed["mean"]))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute(QUERIES[fmt].format(root=root)).fetchall()
    assert len(got) == len(want) > 10
    for g, w in zip(got, want, strict=True):
        assert (g[0], g[1].astimezone(UTC), *g[2:8]) == (*w[:3], *w[3:8])
        assert g[8] == pytest.approx(w[8], rel=1e-12)
    assert isinstance(got[0][1], datetime)
