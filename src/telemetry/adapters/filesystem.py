"""The Storage port on a local directory: the embedded lake.

A key is a relative path with `/` separators, kept as is on disk, so the lake directory reads
like the S3 layout (`raw/year=2026/month=11/day=29/hour=01/x.jsonl`) and DuckDB or Spark can
read it in place.

A write is atomic and durable: the data goes to a temp file next to the target (same
directory, so the rename stays within one filesystem), is fsynced, renamed over the target, and
the directory is fsynced so the rename itself survives a power cut. Directories a write creates
are fsynced into their parents the same way. Readers see the old object, the new one, or (for a
new key) none; never part of one. Temp names start with `.`, and so `list` skips every name
starting with `.`, and keys may not contain such a segment.

A writer killed before its rename leaves its temp file behind (whole or partial; never visible
as an object). `list` deletes the temp files it walks past once they are older than
`stale_temp_seconds` (an hour): no write takes that long, so none still in progress is hit.
`telemetry aggregate` lists all of `raw/` on every run, and so sweeps the lake.

What S3 allows and a directory cannot: `a` and `a/b` both being objects. Writing one after the
other raises StorageUnavailable (the lake's keys never do this).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from telemetry.adapters.private_files import make_private_dir, missing_dirs, open_private
from telemetry.domain.errors import NotFound, StorageUnavailable

_NOT_AN_OBJECT = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)

# `view` maps files of at least this size; copying a smaller one costs less than mapping it.
MAP_MIN_BYTES = 1 << 20
# Live mappings per process at most: each holds a file descriptor (Python's mmap keeps a
# duplicate), and an hour of thousands of files must not exhaust RLIMIT_NOFILE (often 1,024).
MAX_MAPPED = 256


class _Slots:
    """A count of live mappings, shared by every FilesystemStorage of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.live >= self.limit:
                return False
            self.live += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.live -= 1


_MAPPINGS = _Slots(MAX_MAPPED)

# Bounded writes.
_WRITE_CHUNK = 256 * 1024


def _segments(key: str, *, what: str = "key") -> list[str]:
    """The path segments of `key`, or ValueError for anything that could leave the root or
    that `list` would not show."""
    if not key:
        raise ValueError(f"empty {what}")
    if key.startswith("/") or "\\" in key or ".." in key or "\0" in key:
        raise ValueError(f"bad {what} {key!r}: no absolute path, '..', backslash or NUL")
    parts = key.split("/")
    for p in parts:
        if not p:
            raise ValueError(f"bad {what} {key!r}: empty path segment")
        if p.startswith("."):
            raise ValueError(f"bad {what} {key!r}: a segment may not start with '.'")
    return parts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStorage:
    """Objects as files under `root`."""

    _mappings = _MAPPINGS

    def __init__(
        self,
        root: str | Path,
        *,
        stale_temp_seconds: float = 3600.0,
    ) -> None:
        self.root = Path(root)
        self.stale_temp_seconds = stale_temp_seconds
        with self._translated("create the lake directory", self.root):
            self._make_dirs(self.root)

    # -------------------------------------------------------------- the port

    def put(self, key: str, data: bytes) -> None:
        parts = _segments(key)
        target = self.root.joinpath(*parts)
        directory = target.parent
        tmp = directory / f".{parts[-1]}.{secrets.token_hex(8)}.tmp"
        with self._translated("write", target):
            self._make_dirs(directory)
            try:
                fd = open_private(tmp, os.O_WRONLY | os.O_EXCL)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[self._write_chunk(fd, view[:_WRITE_CHUNK]) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._publish(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):  # not created, or already renamed
                    os.unlink(tmp)
                raise
            _fsync_dir(directory)

    def get(self, key: str) -> bytes:
        path = self.root.joinpath(*_segments(key))
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            if exc.errno in _NOT_AN_OBJECT:
                raise NotFound(key) from None
            raise self._unavailable("read", path, exc) from exc

    def view(self, key: str) -> memoryview:
        """The file mapped into memory, read-only (`MappedStorage`): no copy, and pages the
        kernel already caches are shared. Safe because a published file is never written
        again: `put` replaces it by a rename, and a deleted or replaced file stays mapped
        until the view is dropped. A small file, one beyond `MAX_MAPPED` live mappings, or
        one on a filesystem that cannot map it is read into memory instead (a view of the
        copy)."""
        path = self.root.joinpath(*_segments(key))
        try:
            with open(path, "rb") as f:
                mapped = None
                if os.fstat(f.fileno()).st_size >= MAP_MIN_BYTES and self._mappings.take():
                    try:
                        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    except BaseException as exc:
                        self._mappings.give()
                        if not isinstance(exc, OSError):
                            raise
                if mapped is None:
                    return memoryview(f.read())
        except OSError as exc:
            if exc.errno in _NOT_AN_OBJECT:
                raise NotFound(key) from None
            raise self._unavailable("read", path, exc) from exc
        weakref.finalize(mapped, self._mappings.give)
        with contextlib.suppress(OSError, AttributeError):  # advice only
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        return memoryview(mapped)

    def list(self, prefix: str) -> list[str]:
        # The walk starts at the deepest directory the prefix names in full; the prefix's last,
        # partial segment filters names.
        head, _, _ = prefix.rpartition("/")
        if prefix:
            if prefix.startswith("/") or "\\" in prefix or ".." in prefix or "\0" in prefix:
                raise ValueError(f"bad prefix {prefix!r}: no absolute path, '..' or backslash")
            if head:
                _segments(head, what="prefix")
        start = self.root.joinpath(*head.split("/")) if head else self.root
        base = f"{head}/" if head else ""
        with self._translated("list", start):
            keys = [k for k in self._walk(start, base) if k.startswith(prefix)]
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        path = self.root.joinpath(*_segments(key))
        with self._translated("delete", path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            _fsync_dir(path.parent)

    def check(self) -> None:
        with self._translated("check", self.root):
            st = os.stat(self.root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
            vfs = os.statvfs(self.root)
            if vfs.f_bavail == 0:
                raise OSError(errno.ENOSPC, "no space left on device")

    # -------------------------------------------------------------- internals

    def _write_chunk(self, fd: int, chunk: memoryview) -> int:
        """One bounded write of `put`; returns how many bytes it wrote."""
        return os.write(fd, chunk)

    def _publish(self, tmp: Path, target: Path) -> None:
        """Make a fully written temporary file the object, atomically."""
        os.replace(tmp, target)

    def _walk(self, directory: Path, base: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.name.startswith("."):
                if e.name.endswith(".tmp"):  # a write in progress, or one whose writer died
                    self._remove_if_stale(e)
                continue
            if e.is_dir(follow_symlinks=False):
                yield from self._walk(Path(e.path), f"{base}{e.name}/")
            else:
                yield f"{base}{e.name}"

    def _remove_if_stale(self, entry: os.DirEntry[str]) -> None:
        with contextlib.suppress(OSError):  # gone already (renamed, or another sweeper)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > self.stale_temp_seconds:
                os.unlink(entry.path)

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing each new directory's parent so the new entry is durable."""
        for d in missing_dirs(directory):
            if not make_private_dir(d):
                if not d.is_dir():
                    raise FileExistsError(f"{d} exists and is not a folder")
                continue  # another writer made it
            _fsync_dir(d.parent)

    @staticmethod
    def _unavailable(what: str, path: Path, exc: OSError) -> StorageUnavailable:
        reason = exc.strerror or str(exc)
        name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
        if name:
            reason = f"{reason} ({name})"
        return StorageUnavailable(f"filesystem lake: cannot {what} {path}: {reason}")

    @contextmanager
    def _translated(self, what: str, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._unavailable(what, path, exc) from exc


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.health import HealthCheck
    from telemetry.domain.ports.storage import Storage

    def _conforms(x: FilesystemStorage) -> tuple[Storage, HealthCheck]:
        return (x, x)
