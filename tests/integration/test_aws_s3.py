"""S3Storage: the prefix, the content headers, errors; against moto in process and a server."""

from __future__ import annotations

import gzip

import pytest

from telemetry.adapters.s3 import S3Storage, content_headers, ensure_bucket
from telemetry.domain.errors import NotFound, StorageUnavailable
from tests.support import moto as moto_server
from tests.support.moto import REGION, AwsTarget

aws = moto_server.aws


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        ("raw/year=2026/month=11/day=29/hour=01/x.jsonl", {"ContentType": "application/x-ndjson"}),
        ("raw/y/x.jsonl.gz", {"ContentType": "application/x-ndjson", "ContentEncoding": "gzip"}),
        ("aggregates/_state/hourly.json", {"ContentType": "application/json"}),
        ("notes.txt", {"ContentType": "application/octet-stream"}),
    ],
)
def test_content_headers(key: str, headers: dict[str, str]) -> None:
    assert content_headers(key) == headers


@pytest.mark.parametrize("prefix", ["", "fleet/lake", "/fleet/"])
def test_keys_live_under_the_prefix_and_come_back_without_it(aws: AwsTarget, prefix: str) -> None:
    s = aws.storage(prefix)
    raw = "raw/year=2026/month=11/day=29/hour=01/a.jsonl"
    s.put(raw, b'{"a":1}\n')
    s.put("raw/year=2026/month=11/day=29/hour=02/b.jsonl.gz", gzip.compress(b"{}\n"))
    s.put("aggregates/_state/hourly.json", b"{}")
    assert s.list("raw/") == [raw, "raw/year=2026/month=11/day=29/hour=02/b.jsonl.gz"]
    assert s.list("") == sorted([*s.list("raw/"), "aggregates/_state/hourly.json"])
    assert s.get(raw) == b'{"a":1}\n'
    stored = {o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=s.bucket)["Contents"]}
    expect = prefix.strip("/") + "/" if prefix.strip("/") else ""
    assert stored == {expect + k for k in s.list("")}


def test_objects_carry_their_content_type_and_encoding(aws: AwsTarget) -> None:
    s = aws.storage("lake")
    s.put("raw/x.jsonl.gz", gzip.compress(b"{}\n"))
    s.put("raw/x.jsonl", b"{}\n")
    head = aws.client("s3").head_object(Bucket=s.bucket, Key="lake/raw/x.jsonl.gz")
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentEncoding"] == "gzip"
    head = aws.client("s3").head_object(Bucket=s.bucket, Key="lake/raw/x.jsonl")
    assert head["ContentType"] == "application/x-ndjson"
    assert "ContentEncoding" not in head
    assert gzip.decompress(s.get("raw/x.jsonl.gz")) == b"{}\n"  # stored as given


def test_a_rewrite_replaces_the_object(aws: AwsTarget) -> None:
    s = aws.storage()
    s.put("aggregates/hourly/k.jsonl", b"old\n")
    s.put("aggregates/hourly/k.jsonl", b"new\n")
    assert s.get("aggregates/hourly/k.jsonl") == b"new\n"
    assert s.list("aggregates/") == ["aggregates/hourly/k.jsonl"]


def test_listing_pages_through_every_page(aws: AwsTarget) -> None:
    s = aws.storage("p", list_page_size=2)  # S3 pages by 1,000; two shows the same paging
    keys = [f"raw/k{i:02d}.jsonl" for i in range(5)]
    for k in keys:
        s.put(k, b"")
    s.put("rawish.jsonl", b"")
    assert s.list("raw/") == keys


def test_missing_key_is_not_found_and_faults_are_storage_unavailable(aws: AwsTarget) -> None:
    s = aws.storage("lake")
    s.check()
    with pytest.raises(NotFound):
        s.get("raw/nothing.jsonl")
    assert s.list("raw/") == []
    gone = S3Storage(moto_server.unique("no-bucket"))
    with pytest.raises(StorageUnavailable):
        gone.check()
    with pytest.raises(StorageUnavailable):
        gone.put("raw/x.jsonl", b"")
    with pytest.raises(StorageUnavailable):
        gone.get("raw/x.jsonl")
    with pytest.raises(StorageUnavailable):
        gone.list("raw/")


def test_an_unreachable_endpoint_is_storage_unavailable(
    aws: AwsTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    if aws.kind == "mock_aws":
        pytest.skip("an endpoint is what the server variant is about")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s = S3Storage("lake", max_attempts=2)
    with pytest.raises(StorageUnavailable):
        s.check()
    with pytest.raises(StorageUnavailable):
        s.put("raw/x.jsonl", b"")


def test_ensure_bucket_is_idempotent(aws: AwsTarget) -> None:
    name = moto_server.unique("bkt")
    s3 = aws.client("s3")
    assert ensure_bucket(name, REGION, client=s3) is True
    assert ensure_bucket(name, REGION, client=s3) is False
    other = moto_server.unique("bkt")
    assert ensure_bucket(other, "eu-west-1") is True
    assert s3.get_bucket_location(Bucket=other)["LocationConstraint"] == "eu-west-1"
