"""Token buckets in one file that every ingest process of a host maps: `serve --workers N`
then limits a key to the configured rate, not N times it.

The file is a fixed table of slots (key digest, tokens, last update), found by open addressing
from the digest, read and written under an exclusive `lockf` lock; the arithmetic is the
domain's `TokenBucket`. Times are `time.monotonic()`, which all processes of a boot share: a
table written under another boot is cleared when opened.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from telemetry.domain.ratelimit import TokenBucket

_MAGIC = b"TLMRATE1"
_HEADER = struct.Struct("<8sI36s")  # magic, slots, boot id
_SLOT = struct.Struct("<16sdd")  # sha256(key id)[:16], tokens, updated
_EMPTY = bytes(16)
# Slots looked at from a key's home slot before the stalest of them is reused. A bucket left
# alone for burst/rate seconds is full again, so reusing the stalest rarely changes an answer.
_PROBE = 32
SLOTS = 1 << 16


def _boot_id() -> bytes:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()[:36]
    except OSError:  # not Linux: a table is trusted across boots
        return b""


class SharedRateLimiter:
    """`RateLimiter`'s answers, with the buckets in `path` (created 0600 if missing)."""

    def __init__(self, path: Path, rate: float, burst: float, slots: int = SLOTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if slots < _PROBE:
            raise ValueError(f"slots must be at least {_PROBE}")
        self.rate = rate
        self.burst = burst
        self.path = path
        size = _HEADER.size + slots * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                self.slots = self._prepare(slots, size)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, _HEADER.size + self.slots * _SLOT.size)
        except BaseException:
            os.close(self._fd)
            raise
        self._where: dict[str, tuple[bytes, int]] = {}  # key id -> (digest, offset) last seen

    def _prepare(self, slots: int, size: int) -> int:
        """The table's slot count; a new, foreign or other boot's file becomes an empty table."""
        head = os.pread(self._fd, _HEADER.size, 0)
        boot = _boot_id()
        if len(head) == _HEADER.size:
            magic, have, their_boot = _HEADER.unpack(head)
            if (magic == _MAGIC and have >= _PROBE
                    and os.fstat(self._fd).st_size == _HEADER.size + have * _SLOT.size
                    and their_boot.rstrip(b"\0") == boot):
                return int(have)
        os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, size)  # zeros: every slot empty
        os.pwrite(self._fd, _HEADER.pack(_MAGIC, slots, boot), 0)
        return slots

    def take(self, key_id: str, now: float, cost: float = 1.0) -> float:
        """0.0 when the request may go ahead, else the seconds to wait before retrying."""
        fd, table = self._fd, self._map
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            digest, offset, tokens, updated = self._find(key_id, now)
            bucket = TokenBucket(self.rate, self.burst, tokens, updated)
            wait = bucket.take(now, cost)
            _SLOT.pack_into(table, offset, digest, bucket.tokens, bucket.updated)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return wait

    def _find(self, key_id: str, now: float) -> tuple[bytes, int, float, float]:
        """The key's slot and bucket; a new bucket is full. Called under the lock."""
        table = self._map
        seen = self._where.get(key_id)
        if seen is not None:
            digest, offset = seen
            mine, tokens, updated = _SLOT.unpack_from(table, offset)
            if mine == digest:
                return digest, offset, tokens, updated
        else:
            digest = hashlib.sha256(key_id.encode()).digest()[:16]
        home = int.from_bytes(digest[:8], "little") % self.slots
        stalest, stalest_at = -1, float("inf")
        for i in range(_PROBE):
            offset = _HEADER.size + (home + i) % self.slots * _SLOT.size
            mine, tokens, updated = _SLOT.unpack_from(table, offset)
            if mine == digest:
                break
            if mine == _EMPTY:
                tokens, updated = self.burst, now
                break
            if updated < stalest_at:
                stalest, stalest_at = offset, updated
        else:  # every slot near home is another key's: the one left alone longest goes
            offset, tokens, updated = stalest, self.burst, now
        self._where[key_id] = (digest, offset)
        return digest, offset, tokens, updated

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.rate_limits import RateLimits

    def _conforms(x: SharedRateLimiter) -> RateLimits:
        return x
