#!/usr/bin/env python3
"""Developer entry point for a fresh machine with only Python 3.11+.

    python3 dev.py demo    # install what it needs, run the whole pipeline end to end
    python3 dev.py test    # install what it needs, run ruff, mypy, import-linter and pytest

Creates `.venv` beside this file on first use and reinstalls when pyproject.toml changes.
Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _ensure(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs before the project's own checks
        sys.exit(f"Python 3.11+ is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # The C kernels are built at install time: a change to one reinstalls, as pyproject's does.
    sources = [ROOT / "pyproject.toml", ROOT / "setup.py",
               *sorted((ROOT / "src" / "telemetry").glob("*.c"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{digest[:16]}"
    if stamp.exists():
        return
    print(f"installing the project [{extras}] into {VENV}", flush=True)
    subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", f".[{extras}]"], cwd=ROOT)
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


def _run(*argv: str) -> None:
    print("$ " + " ".join(argv), flush=True)
    rc = subprocess.call(list(argv), cwd=ROOT)
    if rc != 0:
        sys.exit(rc)


def demo(args: list[str]) -> None:
    _ensure("can")
    os.execv(str(BIN / "telemetry"), [str(BIN / "telemetry"), "demo", *args])  # noqa: S606


def test(args: list[str]) -> None:
    _ensure("dev,can,bench,parquet")
    _run(str(BIN / "ruff"), "check", "src", "tests", "bench", "dev.py")
    _run(str(BIN / "mypy"))
    _run(str(BIN / "lint-imports"))
    _run(str(PY), "-m", "pytest", *args)


def main() -> None:
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
