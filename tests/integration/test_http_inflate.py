"""gzip bodies: a small one inflated on the event loop, the rest of a big one in a worker
thread, at most `INFLATE_THREADS` at a time, with the same limits and errors either way."""

from __future__ import annotations

import asyncio
import gzip
import random

import anyio
import pytest

from telemetry.entrypoints.http import bodies
from telemetry.entrypoints.http.errors import BadBody, TooLarge
from tests.integration.http_support import gzip_bomb

MiB = 1 << 20


def _noise(n: int) -> bytes:
    """Bytes that compress a little, so the gzip stream is long: many slices of input."""
    alphabet = b"abcdefgh{}[],:0123456789"
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return random.Random(7).randbytes(n).translate(table)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def test_a_big_body_waits_for_an_inflate_thread_while_small_ones_are_inflated_inline() -> None:
    big, small = _noise(3 * MiB), _noise(10_000)

    async def scenario() -> None:
        # Every inflate thread taken: the big body's rest must wait; the loop must not.
        limiter = bodies.inflate_limiter()
        holders = [object() for _ in range(bodies.INFLATE_THREADS)]
        for h in holders:
            await limiter.acquire_on_behalf_of(h)
        waiting = asyncio.ensure_future(bodies.inflate(_gz(big), 8 * MiB))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await bodies.inflate(_gz(small), 8 * MiB) == small  # inline, meanwhile
        assert not waiting.done()
        for h in holders:
            limiter.release_on_behalf_of(h)
        assert await asyncio.wait_for(waiting, 30) == big

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [0, 1, 1000, bodies.INFLATE_INLINE_BYTES,
                                  bodies.INFLATE_INLINE_BYTES + 1, 2 * MiB])
def test_inflated_bytes_are_the_body_whatever_its_size(size: int) -> None:
    data = _noise(size)
    assert anyio.run(bodies.inflate, _gz(data), 8 * MiB) == data
    # Members concatenated, as `cat a.gz b.gz` makes them: one body.
    two = _gz(data) + _gz(b"tail")
    assert anyio.run(bodies.inflate, two, 8 * MiB) == data + b"tail"


@pytest.mark.parametrize("cut", [
    lambda z: z[:-5],  # no complete trailer
    lambda z: z[:-8] + b"\0" * 8,  # wrong CRC
    lambda z: z + b"trailing junk",
    lambda z: z[: len(z) // 2],  # cut off in the middle, in the thread's part
])
def test_a_corrupt_big_body_is_bad_gzip(cut) -> None:
    with pytest.raises(BadBody) as exc:
        anyio.run(bodies.inflate, cut(_gz(_noise(2 * MiB))), 8 * MiB)
    assert exc.value.reason == "bad_gzip"


def test_the_decompressed_limit_holds_inline_and_in_the_thread() -> None:
    for limit in (1000, 1 * MiB):  # reached on the loop; reached in the thread
        with pytest.raises(TooLarge) as exc:
            anyio.run(bodies.inflate, _gz(_noise(2 * MiB)), limit)
        assert exc.value.reason == "decompressed_too_large"
    with pytest.raises(TooLarge):
        anyio.run(bodies.inflate, gzip_bomb(64 * MiB, 16 * MiB), 8 * MiB)
