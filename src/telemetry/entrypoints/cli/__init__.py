"""`telemetry ...`: one console script, a subcommand per stage.

A module per command group (serve, worker, aggregate, dlq, keys here; simulate, replay, demo,
aws, triggers and report beside the code they run), each with its `add_parser`. A command set up
with `run=` takes the invocation (`common.Invocation`: the settings and the container, which a
caller of `main` may have built); one set up with `func=` takes only its arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from telemetry import __version__
from telemetry.entrypoints import simulate
from telemetry.entrypoints.cli import aggregate, dlq, keys, serve, worker
from telemetry.entrypoints.cli.common import Invocation, Parser, missing_extra
from telemetry.entrypoints.container import Container
from telemetry.entrypoints.settings import ConfigError, install_hint

__all__ = ["build_parser", "main"]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`'s command. Importing `replay` imports python-can, which brings in
    asammdf, numpy and pandas: every other command gets a bare `replay` entry instead, so that
    `serve` and the worker start without them (`argv` None: every command in full)."""
    p = Parser(
        prog="telemetry",
        description="Fleet telemetry pipeline. Configuration: TELEMETRY_* environment "
        "variables (see README and docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve.add_parser(sub)
    worker.add_parser(sub)
    aggregate.add_parser(sub)
    simulate.add_parser(sub)
    words = list(argv or ())
    command = next((a for a in words if not a.startswith("-")), None)
    if argv is None or command in (None, "replay") or "-h" in words or "--help" in words:
        _add_replay(sub)
    else:
        sub.add_parser("replay", add_help=False)  # listed among the choices, never run
    keys.add_parser(sub)
    dlq.add_parser(sub)

    from telemetry.entrypoints import demo

    demo.add_parser(sub)

    from telemetry.entrypoints import aws, report, triggers

    aws.add_parser(sub)
    triggers.add_parser(sub)
    report.add_parser(sub)
    return p


def _add_replay(sub: Any) -> None:
    try:
        from telemetry.entrypoints import replay
    except ImportError as exc:  # the can extra is not installed: say so when asked for
        rp = sub.add_parser("replay", help="decode a real CAN log with a DBC file and post its "
                            "readings (needs the can extra)", add_help=False,
                            description="Needs the can extra: " + install_hint("can"))
        rp.set_defaults(func=missing_extra("replay", "can", str(exc)), takes_any_arguments=True)
    else:
        replay.add_parser(sub)


def main(argv: Sequence[str] | None = None, *, container: Container | None = None) -> int:
    """Run `telemetry argv`. `container`: the one the command runs on, built (and its providers
    overridden) by the caller; by default the command builds it from the environment."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    # A command whose extra is missing takes any arguments, to answer with what to install.
    args, unknown = parser.parse_known_args(args_list)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error("unrecognized arguments: " + " ".join(unknown))
    try:
        if getattr(args, "run", None) is not None:
            return int(args.run(args, Invocation(container)))
        return int(args.func(args))
    except ConfigError as exc:
        if os.environ.get("TELEMETRY_LOG_FORMAT", "").strip().lower() == "json":
            # Log collectors expect JSON from every line, this one included.
            print(json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                              "level": "error", "logger": "telemetry",
                              "event": "configuration_error", "error": str(exc)}),
                  file=sys.stderr)
        else:
            print(f"telemetry: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
