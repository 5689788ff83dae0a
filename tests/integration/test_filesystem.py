"""FilesystemStorage and FileApiKeyStore beyond the port suites: atomic writes, real OS errors,
several processes on one key store.

Real failures are produced where the machine allows it, and the test skips (saying why) where
it does not:
- ENOSPC and EROFS: a 64 KiB tmpfs and a read-only bind mount, inside a private mount
  namespace (`unshare -m`, needs root or CAP_SYS_ADMIN); nothing leaks out of it.
- EACCES: root ignores file modes, so a forked child drops to `nobody` before writing.
- EFBIG: a forked child lowers RLIMIT_FSIZE (Python ignores SIGXFSZ, so write fails instead).
- ENOTDIR/EEXIST: a file where a directory is needed, no privileges involved.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telemetry.adapters import filesystem
from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain.api_keys import hash_secret
from telemetry.domain.errors import NotFound, StorageUnavailable
from telemetry.domain.ports.api_keys import StoredApiKey
from telemetry.domain.ports.storage import MappedStorage

KEY = "raw/year=2026/month=11/day=29/hour=01/part-0001.jsonl"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def in_forked_child(fn: Callable[[], str]) -> str:
    """Run `fn` in a forked child and return what it returned (or its exception, as text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = fn()
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


# ------------------------------------------------------------------ keys and layout


@pytest.mark.parametrize(
    "bad",
    ["", "/etc/passwd", "../x", "raw/../../x", "raw/..", "a..b", "raw//x", "raw/", "./x",
     "raw/.hidden", ".x", "raw\\x", "raw/x\0"],
)
def test_keys_that_could_escape_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    with pytest.raises(ValueError):
        s.put(bad, b"x")
    with pytest.raises(ValueError):
        s.get(bad)
    assert list(tmp_path.rglob("*")) == [tmp_path / "lake"]


@pytest.mark.parametrize("bad", ["/", "/etc", "../", "raw/../", "..", "raw//", "a\\b"])
def test_prefixes_that_could_escape_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        FilesystemStorage(tmp_path / "lake").list(bad)


def test_keys_are_paths_under_the_root(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, b"{}\n")
    assert (tmp_path / "lake" / KEY).read_bytes() == b"{}\n"
    assert temp_files(tmp_path) == []


BIG = b"{}\n" * (filesystem.MAP_MIN_BYTES // 3 + 1)


def test_a_view_is_the_object_mapped_and_outlives_its_replacement(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    assert isinstance(s, MappedStorage)
    s.put(KEY, BIG)
    view = s.view(KEY)
    assert isinstance(view.obj, mmap.mmap)
    assert view.readonly and bytes(view) == s.get(KEY)
    s.put(KEY, b"[]\n")  # a new file renamed over it: the view keeps the old one
    assert bytes(view) == BIG
    s.delete(KEY)
    assert bytes(view) == BIG
    with pytest.raises(NotFound):
        s.view(KEY)
    for small in (b"", b"{}\n"):  # copied, not mapped (an empty file cannot be)
        s.put(KEY, small)
        got = s.view(KEY)
        assert isinstance(got.obj, bytes) and bytes(got) == small
    (tmp_path / "lake" / "unreadable").mkdir()
    with pytest.raises(NotFound):  # a directory is not an object, as for get
        s.view("unreadable")


def test_live_mappings_are_bounded_and_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each mapping holds a file descriptor: past the bound, views are copies."""
    slots = filesystem._Slots(2)
    monkeypatch.setattr(FilesystemStorage, "_mappings", slots)
    s = FilesystemStorage(tmp_path / "lake")
    keys = [KEY.replace("0001", f"000{i}") for i in range(3)]
    for k in keys:
        s.put(k, BIG)
    views = [s.view(k) for k in keys]
    assert [type(v.obj) for v in views] == [mmap.mmap, mmap.mmap, bytes]
    assert all(bytes(v) == BIG for v in views) and slots.live == 2
    del views
    gc.collect()
    assert slots.live == 0
    assert isinstance(s.view(keys[2]).obj, mmap.mmap)


def test_a_file_that_cannot_be_mapped_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE filesystems refuse mmap: the view is then a copy, not an error."""
    slots = filesystem._Slots(4)
    monkeypatch.setattr(FilesystemStorage, "_mappings", slots)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(filesystem.mmap, "mmap", refuse)
    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, BIG)
    view = s.view(KEY)
    assert isinstance(view.obj, bytes) and bytes(view) == BIG and slots.live == 0


def test_list_skips_temp_files_of_writes_in_progress_or_crashed(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, b"whole\n")
    hour = (tmp_path / "lake" / KEY).parent
    (hour / ".part-0002.jsonl.0123abcd.tmp").write_bytes(b"half a fi")
    (tmp_path / "lake" / "raw" / ".trash").mkdir()
    (tmp_path / "lake" / "raw" / ".trash" / "x.jsonl").write_bytes(b"x")
    assert s.list("") == [KEY]
    assert s.list("raw/year=2026/month=11/day=29/hour=01/") == [KEY]
    s.put("raw/year=2026/month=11/day=29/hour=01/part-0002.jsonl", b"whole\n")
    assert len(s.list("raw/")) == 2


def test_list_sweeps_temp_files_left_by_writers_that_died_an_hour_ago(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, b"whole\n")
    hour = (tmp_path / "lake" / KEY).parent
    old = time.time() - 3601
    stale = hour / ".part-0002.jsonl.0123abcd.tmp"
    young = hour / ".part-0003.jsonl.4567cdef.tmp"  # could be a write in progress
    not_a_temp = hour / ".keep"
    for f in (stale, young, not_a_temp):
        f.write_bytes(b"half a fi")
    for f in (stale, not_a_temp):
        os.utime(f, (old, old))
    assert s.list("raw/") == [KEY]
    assert sorted(p.name for p in temp_files(tmp_path)) == [".keep", young.name]
    # Listing what does not hold the directory sweeps nothing there.
    young_then_stale = time.time() - 7200
    os.utime(young, (young_then_stale, young_then_stale))
    assert s.list("aggregates/") == []
    assert young.exists()


def _killed_at(root: Path, point: str, data: bytes) -> int:
    """put() in a forked child that SIGKILLs itself at `point`; returns its wait status."""

    def step(p: str) -> None:
        if p == point:
            os.kill(os.getpid(), signal.SIGKILL)

    class Killable(FilesystemStorage):
        def _write_chunk(self, fd: int, chunk: memoryview) -> int:
            written = super()._write_chunk(fd, chunk)
            step("storage.mid_write")
            return written

        def _publish(self, tmp: Path, target: Path) -> None:
            step("storage.before_rename")
            super()._publish(tmp, target)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            Killable(root).put(KEY, data)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("point", ["storage.mid_write", "storage.before_rename"])
def test_a_writer_killed_mid_put_leaves_no_object_only_an_ignored_temp_file(
    tmp_path: Path, point: str
) -> None:
    root = tmp_path / "lake"
    data = b"".join(b'{"n": %d}\n' % i for i in range(60_000))  # ~600 KB, three write chunks
    status = _killed_at(root, point, data)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    s = FilesystemStorage(root)
    assert s.list("") == []
    with pytest.raises(NotFound):
        s.get(KEY)
    [tmp] = temp_files(tmp_path)
    left = tmp.read_bytes()
    if point == "storage.mid_write":
        assert data.startswith(left) and len(left) < len(data)
    else:
        assert left == data
    s.put(KEY, data)  # the retry, as the redelivered messages make the worker do
    assert s.get(KEY) == data and s.list("") == [KEY]


def test_readers_never_see_part_of_an_object(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    versions = [bytes([65 + i]) * (1 + i * 150_000) for i in range(8)]
    s.put(KEY, versions[0])
    stop = threading.Event()
    seen: set[int] = set()
    bad: list[int] = []

    def read() -> None:
        while not stop.is_set():
            data = s.get(KEY)
            if data in versions:
                seen.add(versions.index(data))
            else:
                bad.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(6):
            for v in versions:
                s.put(KEY, v)
    finally:
        stop.set()
        reader.join(10)
    assert bad == []
    assert len(seen) > 1  # the reader did read while the writer wrote
    assert temp_files(tmp_path) == []


def test_a_write_fsyncs_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s.put(KEY, b"x")
    # the data, then the rename, then each new directory's entry in its parent
    assert synced.count("file") == 1
    assert synced[-1] == "dir"
    assert synced.count("dir") == 1 + len(Path(KEY).parts) - 1
    synced.clear()
    s.put(KEY, b"y")  # directories exist: the file and its directory only
    assert synced == ["file", "dir"]


# ------------------------------------------------------------------ errors


def test_a_failed_write_keeps_the_old_object_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, b"old\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageUnavailable, match=r"part-0001\.jsonl.*No space left.*ENOSPC"):
        s.put(KEY, b"new\n")
    monkeypatch.undo()
    assert s.get(KEY) == b"old\n"
    assert temp_files(tmp_path) == []


def test_a_file_where_a_directory_belongs_is_unavailable(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.put("raw/year=2026", b"a file, not a directory")
    with pytest.raises(StorageUnavailable, match="raw/year=2026"):
        s.put(KEY, b"x")
    with pytest.raises(NotFound):
        s.get(KEY)
    assert s.list("raw/year=2026/") == []
    assert temp_files(tmp_path) == []


def test_a_root_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "lake").write_text("oops")
    with pytest.raises(StorageUnavailable, match="lake"):
        FilesystemStorage(tmp_path / "lake")


def test_check_fails_when_the_root_is_gone(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "lake")
    s.check()
    shutil.rmtree(tmp_path / "lake")
    with pytest.raises(StorageUnavailable, match="lake"):
        s.check()
    (tmp_path / "lake").write_text("a file")
    with pytest.raises(StorageUnavailable):
        s.check()


def test_file_too_large_is_unavailable(tmp_path: Path) -> None:
    import resource

    s = FilesystemStorage(tmp_path / "lake")
    s.put(KEY, b"old\n")

    def write_over_the_limit() -> str:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            s.put(KEY, b"x" * 100_000)
        except StorageUnavailable as exc:
            return f"StorageUnavailable: {exc}"
        return "no error"

    out = in_forked_child(write_over_the_limit)
    assert out.startswith("StorageUnavailable"), out
    assert "EFBIG" in out and KEY in out
    assert s.get(KEY) == b"old\n"
    assert temp_files(tmp_path) == []


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """tmp_path's parents are 0700: another user could not reach a lake inside them."""
    d = Path(tempfile.mkdtemp(prefix="lake-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in d.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(d)


def test_permission_denied_is_unavailable(world_readable_dir: Path) -> None:
    root = world_readable_dir / "lake"
    s = FilesystemStorage(root)
    s.put(KEY, b"old\n")
    hour = (root / KEY).parent
    hour.chmod(0o555)
    (root / "raw").chmod(0o555)

    def write_as_a_user() -> str:
        if os.geteuid() == 0:  # root ignores modes: become nobody
            os.setgid(65534)
            os.setuid(65534)
        out = []
        for key in (KEY, "raw/year=2027/month=01/day=01/hour=00/x.jsonl"):
            try:
                s.put(key, b"new\n")
                out.append("no error")
            except StorageUnavailable as exc:
                out.append(str(exc))
        try:
            s.check()
            out.append("no error")
        except StorageUnavailable as exc:
            out.append(str(exc))
        return json.dumps(out)

    results = json.loads(in_forked_child(write_as_a_user))
    assert len(results) == 3, results
    assert all("EACCES" in r for r in results), results
    assert str(hour) in results[0]
    assert s.get(KEY) == b"old\n"
    assert temp_files(root) == []


ERRNO_PROBE = """
import json, sys
from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain.errors import StorageUnavailable
s = FilesystemStorage(sys.argv[1])
out = []
for key, size in (("raw/a/x.jsonl", 1000), ("raw/b/y.jsonl", 200_000)):
    try:
        s.put(key, b"x" * size)
        out.append("ok")
    except StorageUnavailable as e:
        out.append(str(e))
print(json.dumps({"results": out, "list": s.list("raw/")}))
"""


def _in_namespace(mount: str, lake: Path) -> dict[str, list[str]]:
    """Run ERRNO_PROBE on `lake` after `mount`, in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux `unshare`")
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f'{{ {mount} ; }} || exit 77; exec "$0" -c "$1" "$2"',
         sys.executable, ERRNO_PROBE, str(lake)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if r.returncode == 77 or (r.returncode != 0 and r.stderr.startswith("unshare")):
        pytest.skip(f"no private mount namespace here (needs root or CAP_SYS_ADMIN): {r.stderr}")
    assert r.returncode == 0, r.stderr
    out: dict[str, list[str]] = json.loads(r.stdout)
    return out


def test_a_full_disk_is_unavailable(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = _in_namespace(f"mount -t tmpfs -o size=64k tmpfs {mnt}", mnt / "lake")
    small, large = out["results"]
    assert small == "ok"
    assert "ENOSPC" in large and "raw/b/y.jsonl" in large
    assert out["list"] == ["raw/a/x.jsonl"]  # the failed write left nothing listed


def test_a_read_only_filesystem_is_unavailable(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    out = _in_namespace(f"mount --bind {lake} {lake} && mount -o remount,bind,ro {lake}", lake)
    assert all("EROFS" in r for r in out["results"]), out
    assert out["list"] == []


# ------------------------------------------------------------------ FileApiKeyStore


def stored(key_id: str, name: str, secret: str = "s3cr3t") -> StoredApiKey:
    return StoredApiKey(key_id, name, hash_secret(secret), ("truck-*",),
                     datetime(2026, 11, 29, 1, 0, tzinfo=UTC))


def test_the_key_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys.json"
    store = FileApiKeyStore(path)
    secret = "Zb8Yq1x2W3v4U5t6S7r8Q9p0O1n2M3l4K5j6I7h8G9f"
    store.add(stored("0123456789abcdef", "gw", secret))
    text = path.read_text()
    assert secret not in text
    doc = json.loads(text)
    assert doc["keys"] == [{
        "key_id": "0123456789abcdef", "name": "gw",
        "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
        "vehicles": ["truck-*"], "created_at": "2026-11-29T01:00:00+00:00", "revoked": False,
    }]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_missing_file_is_no_keys_and_reading_creates_nothing(tmp_path: Path) -> None:
    store = FileApiKeyStore(tmp_path / "data" / "keys.json")
    assert store.all() == []
    assert store.find("0123456789abcdef") is None
    assert not (tmp_path / "data").exists()


def test_another_instance_sees_changes_within_the_reload_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server = FileApiKeyStore(path, reload_interval=0.2)
    cli = FileApiKeyStore(path)
    assert server.find("0123456789abcdef") is None
    cli.add(stored("0123456789abcdef", "gw"))
    deadline = time.monotonic() + 0.2 + 1.0
    while server.find("0123456789abcdef") is None:
        assert time.monotonic() < deadline, "the new key never showed up"
        time.sleep(0.02)


REVOKE = """
import sys
from telemetry.adapters.api_key_file import FileApiKeyStore
print(FileApiKeyStore(sys.argv[1]).revoke(sys.argv[2]))
"""


def test_a_revoke_by_another_process_takes_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    FileApiKeyStore(path).add(stored("0123456789abcdef", "gw"))
    server = FileApiKeyStore(path, reload_interval=0.3)
    found = server.find("0123456789abcdef")
    assert found is not None and not found.revoked
    r = subprocess.run([sys.executable, "-c", REVOKE, str(path), "gw"],
                       capture_output=True, text=True, timeout=30, check=True)
    assert r.stdout.strip() == "1"
    revoked_at = time.monotonic()
    while True:
        k = server.find("0123456789abcdef")
        assert k is not None
        if k.revoked:
            break
        assert time.monotonic() - revoked_at < 0.3 + 1.0, "the revoke never took effect"
        time.sleep(0.02)


def test_no_reload_before_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server = FileApiKeyStore(path, reload_interval=60)
    assert server.all() == []
    FileApiKeyStore(path).add(stored("0123456789abcdef", "gw"))
    assert server.all() == []  # a cached read costs no stat
    assert FileApiKeyStore(path, reload_interval=0).all() != []


ADD_MANY = """
import sys
from datetime import UTC, datetime
from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.domain.ports.api_keys import StoredApiKey
store = FileApiKeyStore(sys.argv[1])
who = int(sys.argv[2])
for i in range(int(sys.argv[3])):
    store.add(StoredApiKey(f"{who:08x}{i:08x}", f"p{who}", "0" * 64, ("*",),
                        datetime(2026, 11, 29, tzinfo=UTC)))
"""


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    procs = [subprocess.Popen([sys.executable, "-c", ADD_MANY, str(path), str(w), "10"],
                              stderr=subprocess.PIPE) for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    keys = FileApiKeyStore(path).all()
    assert len(keys) == 40
    assert len({k.key_id for k in keys}) == 40


def test_a_corrupt_file_is_never_written_over(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    running = FileApiKeyStore(path, reload_interval=0)
    running.add(stored("0123456789abcdef", "gw"))
    path.write_text('{"keys": [')  # a hand edit gone wrong
    # the running server keeps its last good copy
    assert [k.name for k in running.all()] == ["gw"]
    with pytest.raises(ValueError, match=r"keys\.json"):
        FileApiKeyStore(path).all()  # a fresh one has nothing good to fall back on
    with pytest.raises(ValueError, match="not writing over it"):
        running.revoke("gw")
    assert path.read_text() == '{"keys": ['
