"""The lake's key layout (contract section 5): Hive-style hour partitions."""

from __future__ import annotations

import re
from datetime import UTC, datetime

RAW = "raw/"
AGGREGATES = "aggregates/hourly/"
AGGREGATE_STATE = "aggregates/_state/hourly.json"
CURATED = "curated/"
# Beside the raw files, not among them: engines that read raw/ as a table see only readings.
PARTIALS = "partials/"

_HOUR_RE = re.compile(r"year=(\d{4})/month=(\d{2})/day=(\d{2})/hour=(\d{2})/")


def hour_path(hour: datetime) -> str:
    h = hour.astimezone(UTC)
    return f"year={h:%Y}/month={h:%m}/day={h:%d}/hour={h:%H}/"


def raw_prefix(hour: datetime) -> str:
    return RAW + hour_path(hour)


def raw_key(hour: datetime, name: str, compressed: bool) -> str:
    return f"{raw_prefix(hour)}{name}.jsonl" + (".gz" if compressed else "")


def partials_prefix(hour: datetime) -> str:
    return PARTIALS + hour_path(hour)


def partials_key(hour: datetime, name: str) -> str:
    """An object of partials for raw files of `hour` (see `partials`)."""
    return f"{partials_prefix(hour)}{name}.jsonl"


def aggregate_key(hour: datetime) -> str:
    return AGGREGATES + hour_path(hour) + "vehicles.jsonl"


def hour_of_key(key: str) -> datetime | None:
    m = _HOUR_RE.search(key)
    if m is None:
        return None
    y, mo, d, h = (int(g) for g in m.groups())
    return datetime(y, mo, d, h, tzinfo=UTC)


def is_raw_file(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return (
        key.startswith(RAW)
        and not name.startswith(("_", "."))
        and (key.endswith(".jsonl") or key.endswith(".jsonl.gz"))
    )


def parse_hour(text: str) -> datetime:
    """`2026-11-29T01` (or a full RFC 3339 instant) -> the start of that UTC hour."""
    t = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", t):
        return datetime.strptime(t, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def format_hour(hour: datetime) -> str:
    return f"{hour.astimezone(UTC):%Y-%m-%dT%H}"


def json_schemas() -> dict[str, dict[str, object]]:
    """JSON Schemas of the lake's line types, generated from the msgspec types that write them
    (published as `docs/schemas/<name>.schema.json`)."""
    import msgspec

    from telemetry.domain.aggregation import AggregateLine
    from telemetry.domain.readings import Record

    out: dict[str, dict[str, object]] = {}
    for name, title, tp in (
        ("raw-record", "One line of a raw lake file (raw/year=/month=/day=/hour=/*.jsonl)",
         Record),
        ("aggregate-line",
         "One line of an hourly aggregate (aggregates/hourly/year=/month=/day=/hour=/"
         "vehicles.jsonl)", AggregateLine),
    ):
        schema = msgspec.json.schema(tp)
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                     "title": title, **schema}
    return out
