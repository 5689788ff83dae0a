"""The file-backed rate limits: one table of buckets for every process that maps it."""

from __future__ import annotations

import multiprocessing
import os
import stat
import struct
from pathlib import Path

import pytest

from telemetry.adapters.shared_ratelimit import SharedRateLimiter


def test_two_limiters_on_one_file_share_the_buckets(tmp_path: Path) -> None:
    a = SharedRateLimiter(tmp_path / "b", rate=1.0, burst=3)
    b = SharedRateLimiter(tmp_path / "b", rate=1.0, burst=3)
    assert a.take("k", 10.0) == 0.0
    assert b.take("k", 10.0) == 0.0
    assert a.take("k", 10.0) == 0.0
    assert b.take("k", 10.0) == pytest.approx(1.0)
    assert a.take("k", 10.0) == pytest.approx(1.0)
    assert b.take("other", 10.0) == 0.0
    assert a.take("k", 11.0) == 0.0  # refilled, for both
    assert b.take("k", 11.0) > 0


def _taker(path: str, takes: int, out: multiprocessing.Queue[int]) -> None:
    limiter = SharedRateLimiter(Path(path), rate=1e-6, burst=50)
    out.put(sum(limiter.take("k", 5.0) == 0.0 for _ in range(takes)))


def test_processes_together_get_the_burst_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # as uvicorn starts serve's processes
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_taker, args=(str(tmp_path / "b"), 200, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    allowed = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(allowed) == 50, allowed


def test_the_file_is_the_services_users_only(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SharedRateLimiter(tmp_path / "b", rate=1.0, burst=1).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_a_full_neighbourhood_reuses_the_stalest_slot(tmp_path: Path) -> None:
    limiter = SharedRateLimiter(tmp_path / "b", rate=1.0, burst=1, slots=32)
    for i in range(100):  # more keys than slots: every new key still starts full
        assert limiter.take(f"key-{i}", float(i)) == 0.0, i
        assert limiter.take(f"key-{i}", float(i)) > 0, i


@pytest.mark.parametrize("damage", ["garbage", "other boot", "other size"])
def test_a_table_it_cannot_trust_starts_empty(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "b"
    limiter = SharedRateLimiter(path, rate=1e-6, burst=1, slots=64)
    assert limiter.take("k", 1.0) == 0.0
    limiter.close()
    if damage == "garbage":
        path.write_bytes(b"\x07" * 100)
    elif damage == "other boot":
        with path.open("r+b") as f:
            f.seek(struct.calcsize("<8sI"))
            f.write(b"x" * 36)
    else:
        with path.open("ab") as f:
            f.write(b"\0" * 10)
    again = SharedRateLimiter(path, rate=1e-6, burst=1, slots=64)
    assert again.take("k", 1.0) == 0.0  # a full bucket, not the one emptied above


def test_a_trusted_table_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "b"
    SharedRateLimiter(path, rate=1e-6, burst=1, slots=64).take("k", 1.0)
    assert SharedRateLimiter(path, rate=1e-6, burst=1, slots=4096).take("k", 1.0) > 0

