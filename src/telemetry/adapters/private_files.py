"""Files and folders only the service's user may read: the readings hold GPS positions, the key
store hashes of keys. Modes are set explicitly after creation, so the umask of whoever started
the process (0 in some containers, 002 on shared hosts) cannot widen them."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(directory: Path) -> bool:
    """mkdir of one folder, mode 0700; False when it exists already (left as it is)."""
    try:
        directory.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(directory, DIR_MODE)
    return True


def missing_dirs(directory: Path) -> list[Path]:
    """The folders `mkdir -p directory` would make, outermost first."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    return missing[::-1]


def make_private_dirs(directory: Path) -> None:
    """mkdir -p, each folder made here mode 0700."""
    for d in missing_dirs(directory):
        make_private_dir(d)


def open_to_others(directory: Path) -> bool:
    """True when a folder that exists lets others than its owner in. A folder the service did
    not make (the operator's choice of data dir) is reported, never narrowed behind their
    back."""
    try:
        return bool(directory.stat().st_mode & 0o077)
    except FileNotFoundError:
        return False


def open_private(path: Path, flags: int) -> int:
    """os.open with O_CREAT, the file mode 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
