"""Shared pieces of the in-process HTTP tests: a container on memory adapters with one key."""

from __future__ import annotations

import functools
import gzip
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
from dependency_injector import providers
from litestar.testing import TestClient

from telemetry.adapters.memory import MemoryApiKeyStore, MemoryQueue
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.settings import Settings

KEY_ID, SECRET = "0123456789abcdef", "s" * 43
KEY = format_key(KEY_ID, SECRET)
URL = "/v1/readings"
SETTINGS = Settings(queue="memory", storage="memory")
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
MSGPACK = {"Content-Type": "application/msgpack"}


def make_container(settings: Settings, vehicles: Sequence[str] = ("car-*",)) -> Container:
    c = create_container(settings)
    c.api_keys.override(providers.Object(MemoryApiKeyStore()))
    c.api_keys().add(new_stored_key(KEY_ID, SECRET, "fleet", list(vehicles), datetime.now(UTC)))
    return c


@contextmanager
def client_for(container: Container, settings: Settings) -> Iterator[TestClient[Any]]:
    """A client of the public app (the API and /healthz)."""
    with clients_for(container, settings) as (public, _):
        yield public


@contextmanager
def clients_for(
    container: Container, settings: Settings
) -> Iterator[tuple[TestClient[Any], TestClient[Any]]]:
    """Clients of the public and the operations app of one process (shared metrics)."""
    assert container.settings() == settings, "the container serves its own settings"
    apps = create_apps(container)
    with TestClient(apps.public) as public, TestClient(apps.ops) as ops:
        public.headers["X-API-Key"] = KEY
        ops.headers["X-API-Key"] = KEY
        yield public, ops


def good(vid: str = "car-1", **over: Any) -> dict[str, Any]:
    r = {"vehicle_id": vid, "ts": datetime.now(UTC).isoformat(), "signals": {"Vehicle.Speed": 1.5}}
    r.update(over)
    return r


def ndjson(readings: Sequence[Any]) -> bytes:
    return b"".join(msgspec.json.encode(r) + b"\n" for r in readings)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@functools.cache
def gzip_bomb(total: int = 1 << 30, block: int = 16 << 20) -> bytes:
    """`total` zero bytes as one gzip stream of about total/1000 bytes, built in well under a
    second: each block is compressed after a full flush, so every block after the first
    compresses to the same bytes and is repeated rather than recompressed; the trailer's
    CRC and length are computed for the whole."""
    assert total % block == 0
    zeros = bytes(block)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    steady = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    assert z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH) == steady
    end = z.flush()[:-8]  # the final empty block, without the trailer of a 3-block stream
    crc = 0
    for _ in range(total // block):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, total & 0xFFFFFFFF)
    return first + steady * (total // block - 1) + end + trailer


def inflated_size(data: bytes) -> int:
    """Inflate a gzip stream a bounded piece at a time, counting."""
    d = zlib.decompressobj(wbits=31)
    n, buf = 0, data
    while buf:
        n += len(d.decompress(buf, 1 << 24))
        buf = d.unconsumed_tail
    assert d.eof
    return n


def enqueued(container: Container) -> int:
    q = container.queue()
    assert isinstance(q, MemoryQueue)
    return len(q.messages)


class HangingQueue(MemoryQueue):
    """A queue whose send blocks until released: a queue that stopped answering."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def send(self, bodies: Sequence[bytes]) -> None:
        self.calls += 1
        self.release.wait(30)
        super().send(bodies)

    def check(self) -> None:
        self.release.wait(30)


class BrokenQueue(MemoryQueue):
    """A queue with a bug: send raises something that is not QueueUnavailable."""

    def send(self, bodies: Sequence[bytes]) -> None:
        raise RuntimeError("boom")


def with_queue(container: Container, queue: MemoryQueue) -> Container:
    container.queue.override(providers.Object(queue))
    return container
