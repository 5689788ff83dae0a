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

from telemetry import __version__
from telemetry.entrypoints import simulate
from telemetry.entrypoints.cli import aggregate, dlq, keys, serve, worker
from telemetry.entrypoints.cli.common import Invocation, Parser, missing_extra
from telemetry.entrypoints.container import Container
from telemetry.entrypoints.settings import ConfigError, install_hint

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
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
    try:
        from telemetry.entrypoints import replay
    except ImportError as exc:  # the can extra is not installed: say so when asked for
        rp = sub.add_parser("replay", help="decode a real CAN log with a DBC file and post its "
                            "readings (needs the can extra)", add_help=False,
                            description="Needs the can extra: " + install_hint("can"))
        rp.set_defaults(func=missing_extra("replay", "can", str(exc)), takes_any_arguments=True)
    else:
        replay.add_parser(sub)
    keys.add_parser(sub)
    dlq.add_parser(sub)

    from telemetry.entrypoints import demo

    demo.add_parser(sub)

    from telemetry.entrypoints import aws, report, triggers

    aws.add_parser(sub)
    triggers.add_parser(sub)
    report.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None, *, container: Container | None = None) -> int:
    """Run `telemetry argv`. `container`: the one the command runs on, built (and its providers
    overridden) by the caller; by default the command builds it from the environment."""
    parser = build_parser()
    # A command whose extra is missing takes any arguments, to answer with what to install.
    args, unknown = parser.parse_known_args(argv)
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
