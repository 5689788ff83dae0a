"""The lake as query engines see it: DuckDB with its default options over what the pipeline
wrote reads back the project's own aggregates, the documented SQL aggregate computes them from
raw, and every line validates against its published JSON Schema."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from telemetry.domain.lake import json_schemas
from telemetry.entrypoints import cli
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import URL, client_for, make_container

duckdb = pytest.importorskip("duckdb")  # the `bench` extra; the test command installs it

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
QUERYING = ROOT / "docs" / "querying.md"


def _readings(now: datetime, seed: int) -> Iterator[list[dict[str, Any]]]:
    """Requests over three event-time hours: some of one vehicle (they carry partials), some
    mixed, every signal type, signals that come and go."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    for v in range(4):
        yield [{"vehicle_id": f"car-{v}",
                "ts": (start + timedelta(seconds=97 * i + v + seed,
                                         microseconds=i * 7)).isoformat(),
                "signals": {"Vehicle.Speed": (i * 7.3 + v) % 130, "Vehicle.Gear": "D",
                            "Vehicle.Powertrain.Rpm": 800 + 13 * i, "Vehicle.IsMoving": i % 3 > 0}}
               for i in range(40)]
    mixed = []
    for i in range(60):
        ts = start + timedelta(minutes=2 * i + seed, milliseconds=i)
        signals: dict[str, Any] = {"Vehicle.Speed": float(i % 11) - 0.5}
        if i % 4 == 0:
            signals["Vehicle.Cabin.Temperature"] = -3 + i % 9
        mixed.append({"vehicle_id": f"car-{i % 5}", "ts": ts.isoformat(), "signals": signals})
    yield mixed


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("engines")
    settings = Settings(data_dir=data, queue="sqlite", storage="filesystem", batch_max_age=0.01)
    now = datetime.now(UTC)
    saved = dict(os.environ)
    os.environ["TELEMETRY_DATA_DIR"] = str(data)
    try:
        for seed, compress in ((0, "false"), (1, "true")):  # plain and gzip raw files
            with client_for(make_container(settings), settings) as client:
                requests = list(_readings(now, seed))
                for body in [*requests, requests[0]]:  # a retried request: copies in raw
                    r = client.post(URL, json={"readings": body})
                    assert r.status_code == 202, r.text
            os.environ["TELEMETRY_COMPRESS"] = compress
            assert cli.main(["worker", "--once"]) == 0
            assert cli.main(["aggregate", "--jobs", "1"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    root = data / "lake"
    assert list((root / "raw").rglob("*.jsonl")) and list((root / "raw").rglob("*.jsonl.gz"))
    return root


def _lines(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        out.extend(json.loads(line) for line in data.splitlines())
    return out


def _aggregates(lake: Path) -> list[dict[str, Any]]:
    return _lines(sorted((lake / "aggregates" / "hourly").rglob("vehicles.jsonl")))


def _instant(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_duckdb_reads_the_aggregates_row_for_row(lake: Path) -> None:
    con = duckdb.connect()
    rows = _rows(con, f"SELECT * FROM read_json('{lake}/aggregates/hourly/**/*.jsonl')")
    ours = _aggregates(lake)
    assert len(rows) == len(ours) >= 10
    assert {"hour_start", "year", "month", "day", "hour"} <= set(rows[0])
    got = {(_instant(r["hour_start"]), r["vehicle_id"]): r for r in rows}
    for line in ours:
        row = got[_instant(line["hour_start"]), line["vehicle_id"]]
        hour = _instant(line["hour_start"])
        # The partition columns DuckDB detects agree with the fields: nothing is shadowed.
        assert (int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"])) == (
            hour.year, hour.month, hour.day, hour.hour)
        assert row["readings"] == line["readings"]
        assert _instant(row["first_ts"]) == _instant(line["first_ts"])
        assert _instant(row["last_ts"]) == _instant(line["last_ts"])
        signals = {k: v for k, v in row["signals"].items() if v is not None}
        assert signals == line["signals"]


def test_duckdb_reads_raw_with_its_partitions(lake: Path) -> None:
    con = duckdb.connect()
    rows = _rows(con, f"SELECT vehicle_id, ts, year, month, day, hour "
                      f"FROM read_json('{lake}/raw/**/*.jsonl*')")
    ours = _lines(sorted((lake / "raw").rglob("*.jsonl*")))
    assert len(rows) == len(ours)
    for r in rows:
        ts = _instant(r["ts"]).astimezone(UTC)
        assert (int(r["year"]), int(r["month"]), int(r["day"]), int(r["hour"])) == (
            ts.year, ts.month, ts.day, ts.hour)


def _documented_sql(name: str) -> str:
    """The SQL block after the `<!-- name -->` marker in docs/querying.md."""
    text = QUERYING.read_text()
    m = re.search(rf"<!-- {name} -->\s*```sql\n(.*?)```", text, re.S)
    assert m, f"no SQL block marked {name} in {QUERYING}"
    return m.group(1)


def test_the_documented_sql_aggregate_matches(lake: Path) -> None:
    con = duckdb.connect()
    sql = _documented_sql("duckdb-hourly").replace("'lake/", f"'{lake}/")
    rows = _rows(con, sql)
    ours = _aggregates(lake)
    assert len(rows) == len(ours)
    got = {(_instant(r["hour_start"]), r["vehicle_id"]): r for r in rows}
    for line in ours:
        row = got[_instant(line["hour_start"]), line["vehicle_id"]]
        assert row["readings"] == line["readings"]
        assert _instant(row["first_ts"]) == _instant(line["first_ts"])
        assert _instant(row["last_ts"]) == _instant(line["last_ts"])
        signals = json.loads(row["signals"]) if isinstance(row["signals"], str) else row["signals"]
        assert set(signals) == set(line["signals"])
        for name, st in line["signals"].items():
            mine = signals[name]
            assert (mine["count"], mine["min"], mine["max"]) == (st["count"], st["min"], st["max"])
            assert math.isclose(mine["mean"], st["mean"], rel_tol=1e-12, abs_tol=1e-12)


def test_every_file_validates_against_its_schema(lake: Path) -> None:
    checker = jsonschema.FormatChecker()
    schemas = {n: jsonschema.Draft202012Validator(s, format_checker=checker)
               for n, s in json_schemas().items()}
    raw = _lines(sorted((lake / "raw").rglob("*.jsonl*")))
    aggregates = _aggregates(lake)
    assert raw and aggregates
    for name, lines in (("raw-record", raw), ("aggregate-line", aggregates)):
        for line in lines:
            schemas[name].validate(line)
    bad = dict(aggregates[0], hour_start="23")  # what a shadowed partition column looked like
    with pytest.raises(jsonschema.ValidationError):
        schemas["aggregate-line"].validate(bad)


def test_published_schemas_are_current() -> None:
    """docs/schemas/*.json are what the msgspec types generate; to refresh them:
    `UPDATE_SCHEMAS=1 pytest tests/integration/test_lake_engines.py -k published`."""
    for name, schema in json_schemas().items():
        path = SCHEMAS / f"{name}.schema.json"
        text = json.dumps(schema, indent=2) + "\n"
        if os.environ.get("UPDATE_SCHEMAS"):
            path.write_text(text)
        assert path.read_text() == text, f"{path} is stale: see this test's docstring"


def test_the_documented_duckdb_examples_run(lake: Path) -> None:
    """The example queries of docs/querying.md's DuckDB section bind and run over the lake."""
    section = QUERYING.read_text().split("## DuckDB", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block
    statements = [s for s in block.group(1).split(";") if s.strip()]
    assert len(statements) == 2
    con = duckdb.connect()
    hour = _instant(_aggregates(lake)[0]["hour_start"])
    for text in statements:
        sql = re.sub(r"year = \d+ AND month = \d+ AND day = \d+( AND hour = \d+)?",
                     f"year = {hour.year} AND month = {hour.month} AND day = {hour.day}"
                     f" AND hour = {hour.hour}", text.replace("'lake/", f"'{lake}/"))
        assert con.execute(sql).fetchall(), sql
