"""`python -m tests.support.launch [--crash-at P[:N]] -- ARGS...`: `telemetry ARGS`, with the
container built here so that the crash tests can wrap its queue and storage (`crash.install`).
Run from the repository root, as pytest does."""

from __future__ import annotations

import argparse
import sys

from telemetry.entrypoints import cli
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import load_settings
from tests.support import crash


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.launch")
    parser.add_argument("--crash-at", type=crash.parse_crash_at, default=None)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    container = create_container(load_settings())
    if ns.crash_at is not None:
        crash.install(container, ns.crash_at)
    return cli.main(args, container=container)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
