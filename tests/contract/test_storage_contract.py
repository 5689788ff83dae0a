"""The Storage port's contract, against every adapter in STORAGE_ADAPTERS, with the lake's key
layout (CONTRACT.md section 5)."""

from __future__ import annotations

import pytest

from telemetry.domain.errors import NotFound
from telemetry.domain.ports.storage import Storage

HOUR = "raw/year=2026/month=11/day=29/hour=01"
LAKE = [
    f"{HOUR}/a.jsonl",
    f"{HOUR}/b.jsonl.gz",
    "raw/year=2026/month=11/day=29/hour=10/a.jsonl",
    "raw/year=2026/month=11/day=30/hour=00/a.jsonl",
    "raw/year=2026/month=12/day=01/hour=00/a.jsonl",
    "aggregates/hourly/year=2026/month=11/day=29/hour=01/vehicles.jsonl",
    "rawdata/x.jsonl",
]


def fill(storage: Storage, keys: list[str]) -> None:
    for k in keys:
        storage.put(k, k.encode())


def test_the_adapter_implements_the_port(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    storage.check()


def test_put_then_get_returns_the_same_bytes(storage: Storage) -> None:
    data = bytes(range(256)) * 3 + "café 🚗\n".encode()
    storage.put(f"{HOUR}/x.jsonl", data)
    assert storage.get(f"{HOUR}/x.jsonl") == data


def test_an_empty_object(storage: Storage) -> None:
    storage.put(f"{HOUR}/empty.jsonl", b"")
    assert storage.get(f"{HOUR}/empty.jsonl") == b""
    assert storage.list(HOUR) == [f"{HOUR}/empty.jsonl"]


def test_a_missing_key_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.get(f"{HOUR}/missing.jsonl")
    fill(storage, LAKE)
    with pytest.raises(NotFound):
        storage.get(f"{HOUR}/missing.jsonl")
    with pytest.raises(NotFound):  # a prefix of keys is not an object
        storage.get(HOUR)


def test_put_overwrites(storage: Storage) -> None:
    key = "aggregates/hourly/year=2026/month=11/day=29/hour=01/vehicles.jsonl"
    storage.put(key, b"old\n" * 1000)
    storage.put(key, b"new\n")
    assert storage.get(key) == b"new\n"
    assert storage.list("aggregates/") == [key]


def test_list_filters_by_exact_prefix_and_sorts(storage: Storage) -> None:
    fill(storage, list(reversed(LAKE)))
    assert storage.list("") == sorted(LAKE)
    assert storage.list("raw/") == sorted(k for k in LAKE if k.startswith("raw/"))
    assert storage.list("raw") == sorted(k for k in LAKE if k.startswith("raw"))
    assert storage.list(f"{HOUR}/") == [f"{HOUR}/a.jsonl", f"{HOUR}/b.jsonl.gz"]
    # a prefix may end inside a path segment
    assert storage.list("raw/year=2026/month=11/day=29/hour=1") == [
        "raw/year=2026/month=11/day=29/hour=10/a.jsonl"
    ]
    assert storage.list("raw/year=2026/month=1") == sorted(
        k for k in LAKE if k.startswith("raw/year=2026/month=1")
    )
    assert storage.list(f"{HOUR}/a") == [f"{HOUR}/a.jsonl"]
    assert storage.list(f"{HOUR}/a.jsonl") == [f"{HOUR}/a.jsonl"]
    assert storage.list("nothing/") == []
    assert storage.list("raw/year=2027/") == []


def test_list_sorts_whole_keys_not_path_segments(storage: Storage) -> None:
    # '-' < '.' < '/' : a directory walk in segment order would put "x/a/b" first
    keys = ["x/a/b", "x/a.b", "x/a-b", "x/a0"]
    fill(storage, keys)
    assert storage.list("x/") == sorted(keys) == ["x/a-b", "x/a.b", "x/a/b", "x/a0"]


def test_a_large_object(storage: Storage) -> None:
    data = b"".join(f'{{"i": {i}, "pad": "{"x" * 90}"}}\n'.encode() for i in range(120_000))
    assert len(data) > 10 * 1024 * 1024
    storage.put(f"{HOUR}/large.jsonl", data)
    assert storage.get(f"{HOUR}/large.jsonl") == data


def test_delete_removes_a_key_and_a_missing_one_is_no_error(storage: Storage) -> None:
    storage.put("curated/a/part-1.jsonl.gz", b"1")
    storage.put("curated/a/part-2.jsonl.gz", b"2")
    storage.delete("curated/a/part-1.jsonl.gz")
    storage.delete("curated/a/part-1.jsonl.gz")
    storage.delete("curated/never/there.jsonl")
    assert storage.list("curated/") == ["curated/a/part-2.jsonl.gz"]
    with pytest.raises(NotFound):
        storage.get("curated/a/part-1.jsonl.gz")
