"""The Storage port on Amazon S3, through boto3.

The lake's keys (contract section 5) sit under an optional prefix in one bucket; the port sees
them without it. A PutObject is atomic (readers see the whole object or none), which is the
port's promise, so each file is one PutObject: no multipart upload (5 GiB per PUT is far above
the batch policy's files). Every botocore error leaves this module as StorageUnavailable, a
missing key as NotFound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from telemetry.adapters.aws_client import make_client
from telemetry.domain.errors import NotFound, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING = {"NoSuchKey", "404", "NotFound"}


def content_headers(key: str) -> dict[str, str]:
    """ContentType and ContentEncoding for a lake key, so browsers, `aws s3 cp` and query
    engines know what they fetch."""
    name = key.rsplit("/", 1)[-1]
    gz = name.endswith(".gz")
    base = name.removesuffix(".gz")
    if base.endswith(".jsonl"):
        ctype = "application/x-ndjson"
    elif base.endswith(".json"):
        ctype = "application/json"
    else:
        ctype = "application/octet-stream"
    headers = {"ContentType": ctype}
    if gz:
        headers["ContentEncoding"] = "gzip"
    return headers


def _error(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code", "?"))


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        msg = exc.response.get("Error", {}).get("Message", "")
        raise StorageUnavailable(f"S3 {what}: {_error(exc)}: {msg}".rstrip(": ")) from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"S3 {what}: {type(exc).__name__}: {exc}") from exc


class S3Storage:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        region_name: str | None = None,
        max_attempts: int | None = None,
        list_page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket is required")
        self.bucket = bucket
        self._page_size = list_page_size
        p = prefix.strip("/")
        self.prefix = p + "/" if p else ""
        self._client: S3Client = client or make_client(
            "s3", region_name=region_name, read_timeout=30, max_attempts=max_attempts
        )

    def put(self, key: str, data: bytes) -> None:
        with _translated(f"put {self.prefix}{key}"):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                **content_headers(key),  # type: ignore[arg-type]
            )

    def get(self, key: str) -> bytes:
        full = self.prefix + key
        with _translated(f"get {full}"):
            try:
                obj = self._client.get_object(Bucket=self.bucket, Key=full)
                # Read inside: a connection dropped mid-body is a botocore error too.
                data: bytes = obj["Body"].read()
            except ClientError as exc:
                if _error(exc) in _MISSING:
                    raise NotFound(key) from None
                raise
        return data

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        cut = len(self.prefix)
        with _translated(f"list {self.prefix}{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self._page_size},
            )
            for page in pages:
                keys.extend(o["Key"][cut:] for o in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with _translated(f"delete {self.prefix}{key}"):
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def check(self) -> None:
        with _translated(f"bucket {self.bucket}"):
            self._client.head_bucket(Bucket=self.bucket)


def bucket_missing(bucket: str, *, client: Any = None) -> bool:
    """True only when S3 answers that the bucket does not exist. One quick attempt: an outage
    or a refusal is not decided here (the stages retry the lake), nor waited for."""
    s3: S3Client = client or make_client("s3", read_timeout=2, max_attempts=1)
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return _error(exc) in {"404", "NoSuchBucket", "NotFound"}
    except BotoCoreError:
        return False
    return False


# ------------------------------------------------------------------ provisioning


def ensure_bucket(bucket: str, region: str, *, client: Any = None) -> bool:
    """Create the bucket unless it exists and is ours; True when it was created.

    New buckets already block public access and encrypt at rest (SSE-S3) by default.
    """
    s3: S3Client = client or make_client("s3", region_name=region, read_timeout=30)
    with _translated(f"bucket {bucket}"):
        try:
            s3.head_bucket(Bucket=bucket)
            return False
        except ClientError as exc:
            if _error(exc) not in _MISSING:
                raise  # 403: the name is taken by another account, or we may not look
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":  # us-east-1 refuses its own name as a location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as exc:
            if _error(exc) != "BucketAlreadyOwnedByYou":
                raise
            return False
        return True


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.health import HealthCheck
    from telemetry.domain.ports.storage import Storage

    def _conforms(x: S3Storage) -> tuple[Storage, HealthCheck]:
        return (x, x)
