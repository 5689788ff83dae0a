"""The lake's key layout (contract section 5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.domain import lake
from tests.strategies import utc_offsets

H = datetime(2026, 11, 29, 1, tzinfo=UTC)

hours = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(9999, 12, 30)).map(
    lambda d: d.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
)


def test_raw_key_matches_the_contract_exactly() -> None:
    assert (
        lake.raw_key(H, "worker-1-0001", compressed=False)
        == "raw/year=2026/month=11/day=29/hour=01/worker-1-0001.jsonl"
    )
    assert (
        lake.raw_key(H, "worker-1-0001", compressed=True)
        == "raw/year=2026/month=11/day=29/hour=01/worker-1-0001.jsonl.gz"
    )
    assert lake.raw_prefix(H) == "raw/year=2026/month=11/day=29/hour=01/"


def test_aggregate_key_matches_the_contract_exactly() -> None:
    assert (
        lake.aggregate_key(H)
        == "aggregates/hourly/year=2026/month=11/day=29/hour=01/vehicles.jsonl"
    )


def test_keys_use_the_utc_hour_and_zero_padding() -> None:
    local = datetime(2026, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=5)))  # 2026-01-01T22Z
    assert lake.hour_path(local) == "year=2026/month=01/day=01/hour=22/"
    assert lake.aggregate_key(local).startswith("aggregates/hourly/year=2026/month=01/day=01/")


@settings(max_examples=150, deadline=None)
@given(hours, utc_offsets(), st.booleans())
def test_hour_of_key_inverts_the_key_functions(
    hour: datetime, tz: timezone, compressed: bool
) -> None:
    written_as = hour.astimezone(tz)  # the same instant, any offset
    key = lake.raw_key(written_as, "f", compressed)
    assert lake.hour_of_key(key) == hour
    assert lake.hour_of_key(lake.aggregate_key(written_as)) == hour
    assert lake.hour_of_key(lake.raw_prefix(written_as)) == hour
    assert lake.is_raw_file(key)
    assert lake.hour_of_key(key).tzinfo == UTC  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(hours)
def test_format_and_parse_hour_round_trip(hour: datetime) -> None:
    text = lake.format_hour(hour)
    assert len(text) == 13  # 2026-11-29T01
    assert lake.parse_hour(text) == hour
    assert lake.format_hour(lake.parse_hour(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(9999, 12, 30)),
    utc_offsets(),
)
def test_parse_hour_of_an_instant_is_its_utc_hour(instant: datetime, tz: timezone) -> None:
    aware = instant.replace(tzinfo=UTC).astimezone(tz)
    expected = instant.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
    assert lake.parse_hour(aware.isoformat()) == expected
    assert lake.parse_hour(instant.isoformat() + "Z") == expected


def test_parse_hour_forms() -> None:
    assert lake.parse_hour("2026-11-29T01") == H
    assert lake.parse_hour(" 2026-11-29T01 ") == H
    assert lake.parse_hour("2026-11-29T01:59:59Z") == H
    assert lake.parse_hour("2026-11-29T03:30:00+02:00") == H
    assert lake.parse_hour("2026-11-29T01:30:00") == H  # no offset: UTC
    assert lake.format_hour(datetime(2026, 11, 29, 3, 5, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-11-29T01"
    )


@pytest.mark.parametrize("text", ["", "yesterday", "2026-11-29T25", "2026-13-01T00", "2026/11/29"])
def test_parse_hour_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        lake.parse_hour(text)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("raw/year=2026/month=11/day=29/hour=01/a.jsonl", H),
        ("prefix/raw/year=2026/month=11/day=29/hour=01/a.jsonl.gz", H),
        ("raw/year=2026/month=11/day=29/a.jsonl", None),
        ("raw/year=26/month=11/day=29/hour=01/a.jsonl", None),
        ("raw/year=2026/month=11/day=29/hour=1/a.jsonl", None),
        ("something/else", None),
    ],
)
def test_hour_of_key(key: str, expected: datetime | None) -> None:
    assert lake.hour_of_key(key) == expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("raw/year=2026/month=11/day=29/hour=01/w-1.jsonl", True),
        ("raw/year=2026/month=11/day=29/hour=01/w-1.jsonl.gz", True),
        ("raw/year=2026/month=11/day=29/hour=01/.w-1.jsonl.tmp", False),
        ("raw/year=2026/month=11/day=29/hour=01/_w-1.jsonl", False),
        ("raw/year=2026/month=11/day=29/hour=01/.w-1.jsonl", False),
        ("raw/year=2026/month=11/day=29/hour=01/w-1.json", False),
        ("aggregates/hourly/year=2026/month=11/day=29/hour=01/vehicles.jsonl", False),
        (lake.AGGREGATE_STATE, False),
    ],
)
def test_is_raw_file(key: str, raw: bool) -> None:
    assert lake.is_raw_file(key) is raw
