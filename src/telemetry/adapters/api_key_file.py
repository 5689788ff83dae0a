"""The KeyStore port on a JSON file, shared by the running server and the `telemetry keys` CLI.

The file holds what `StoredApiKey` holds: key ids, names, sha256 hashes of the secrets, vehicle
patterns, creation times, revocation flags; never a key in clear. Its mode is 0600.

- Writes (add, revoke) run under an exclusive `flock` on a lock file next to it (the data file
  itself is replaced by each write, so a lock on it would lock an old inode), read the file
  afresh under that lock, and replace it atomically: temp file in the same directory, fsync,
  rename, fsync of the directory. Two CLIs at once lose no update; a reader never sees half a
  file.
- Reads come from a copy in memory. At most every `reload_interval` seconds a read stats the
  file and reloads it when its inode, size or mtime changed (every write is a rename, so the
  inode changes even when mtime and size do not). A revoke by the CLI thus takes effect in a
  running server within about `reload_interval`, without a restart.
- A file that cannot be parsed is never overwritten: writes refuse it with ValueError. A reader
  that already holds a good copy keeps it (and logs the problem) rather than failing every
  request; a reader without one raises ValueError naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telemetry.adapters.private_files import make_private_dirs, open_private
from telemetry.domain.ports.api_keys import StoredApiKey

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

_Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _to_json(k: StoredApiKey) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "name": k.name,
        "secret_hash": k.secret_hash,
        "vehicles": list(k.vehicles),
        "created_at": k.created_at.isoformat(),
        "revoked": k.revoked,
    }


def _from_json(d: Any) -> StoredApiKey:
    if not isinstance(d, dict):
        raise TypeError("a key record must be an object")
    vehicles = d["vehicles"]
    fields = (d["key_id"], d["name"], d["secret_hash"], d["created_at"])
    if not all(isinstance(v, str) for v in (*fields, *vehicles)) or not isinstance(
        d.get("revoked", False), bool
    ):
        raise TypeError("a key record has a field of the wrong type")
    created_at = datetime.fromisoformat(d["created_at"])
    if created_at.tzinfo is None:
        raise ValueError("created_at has no UTC offset")
    return StoredApiKey(
        key_id=d["key_id"],
        name=d["name"],
        secret_hash=d["secret_hash"],
        vehicles=tuple(vehicles),
        created_at=created_at,
        revoked=d.get("revoked", False),
    )


class FileApiKeyStore:
    def __init__(self, path: str | Path, *, reload_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.reload_interval = reload_interval
        self._mutex = threading.Lock()  # flock locks per open file, not per thread
        self._keys: dict[str, StoredApiKey] = {}
        self._signature: _Signature | None = None
        self._loaded = False
        self._checked_at = -float("inf")

    # -------------------------------------------------------------- the port

    def find(self, key_id: str) -> StoredApiKey | None:
        return self._current().get(key_id)

    def all(self) -> list[StoredApiKey]:
        return sorted(self._current().values(), key=lambda k: (k.created_at, k.key_id))

    def add(self, key: StoredApiKey) -> None:
        with self._writing() as keys:
            if key.key_id in keys:
                raise ValueError(f"key id {key.key_id} exists")
            keys[key.key_id] = key

    def revoke(self, name_or_id: str) -> int:
        n = 0
        with self._writing() as keys:
            for k in list(keys.values()):
                if not k.revoked and name_or_id in (k.name, k.key_id):
                    keys[k.key_id] = replace(k, revoked=True)
                    n += 1
        return n

    # -------------------------------------------------------------- reading

    def _current(self) -> dict[str, StoredApiKey]:
        with self._mutex:
            now = time.monotonic()
            if self._loaded and now - self._checked_at < self.reload_interval:
                return self._keys
            self._checked_at = now
            try:
                if self._loaded and self._stat_signature() == self._signature:
                    return self._keys
                self._keys, self._signature = self._read()
            except (OSError, ValueError, TypeError, KeyError) as exc:
                if not self._loaded:
                    raise ValueError(f"key store {self.path}: cannot read it: {exc}") from exc
                log.error("key store %s: cannot reload, keeping the last good copy: %s",
                          self.path, exc)
                return self._keys
            self._loaded = True
            return self._keys

    def _stat_signature(self) -> _Signature | None:
        try:
            return _signature(os.stat(self.path))
        except FileNotFoundError:
            return None

    def _read(self) -> tuple[dict[str, StoredApiKey], _Signature | None]:
        """The keys in the file and the file's signature; no file is no keys."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - fstat of the very file read
        except FileNotFoundError:
            return {}, None
        with f:
            sig = _signature(os.fstat(f.fileno()))
            raw = f.read()
        if not raw.strip():
            return {}, sig
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError('expected an object with a "keys" list')
        if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"unknown format version {doc.get('version')!r}")
        keys: dict[str, StoredApiKey] = {}
        for record in doc["keys"]:
            k = _from_json(record)
            keys[k.key_id] = k
        return keys, sig

    # -------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, StoredApiKey]]:
        """The current keys, read under the cross-process lock, to change in place; written
        back atomically when the block ends without an error."""
        with self._mutex:
            make_private_dirs(self.path.parent)
            fd = open_private(self.lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    keys, sig = self._read()
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(
                        f"key store {self.path}: cannot parse it, not writing over it: {exc}"
                    ) from exc
                before = dict(keys)
                yield keys
                if keys != before:
                    sig = self._write(keys)
                self._keys, self._signature = keys, sig
                self._loaded = True
                self._checked_at = time.monotonic()
            finally:
                os.close(fd)  # releases the flock

    def _write(self, keys: dict[str, StoredApiKey]) -> _Signature:
        doc = {"version": FORMAT_VERSION, "keys": [_to_json(k) for k in keys.values()]}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = open_private(tmp, os.O_WRONLY | os.O_EXCL)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                sig = _signature(os.fstat(fd))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return sig


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.api_keys import ApiKeyAdmin, ApiKeyLookup

    def _conforms(x: FileApiKeyStore) -> tuple[ApiKeyLookup, ApiKeyAdmin]:
        return (x, x)
