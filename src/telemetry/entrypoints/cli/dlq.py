"""`telemetry dlq list|redrive`: the dead-lettered messages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.ports.dead_letters import DeadLetters
from telemetry.entrypoints.cli.common import Invocation
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry")


def add_parser(sub: Any) -> None:
    dp = sub.add_parser("dlq", help="inspect and replay dead-lettered messages",
                        description="Messages received max-receives times without being "
                        "stored land in the dead-letter queue. List them, or move them back.")
    dsub = dp.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="list dead-lettered messages (one JSON line each)",
                         description="List dead-lettered messages without consuming them.")
    dl.add_argument("--max", type=int, default=100, help="at most this many")
    dl.set_defaults(run=run_list)
    dr = dsub.add_parser("redrive", help="move every dead-lettered message back to the queue",
                         description="Move every dead-lettered message back to the queue, "
                         "with its receive count reset.")
    dr.set_defaults(run=run_redrive)


def _queue(inv: Invocation) -> DeadLetters:
    queue: DeadLetters = inv.container().queue()
    return queue


def run_list(args: argparse.Namespace, inv: Invocation) -> int:
    inv.settings()
    try:
        dead = _queue(inv).dead_letters(args.max)
    except QueueUnavailable as exc:
        print(f"telemetry dlq list: queue unavailable, try again: {exc}", file=sys.stderr)
        return 1
    for m in dead:
        head = m.body.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
        print(json.dumps({"message_id": m.message_id, "receive_count": m.receive_count,
                          "bytes": len(m.body), "head": head}))
    return 0


def run_redrive(args: argparse.Namespace, inv: Invocation) -> int:
    inv.settings()
    try:
        n = _queue(inv).redrive()
    except QueueUnavailable as exc:
        # Each message is sent before it is deleted from the dead-letter queue: some may have
        # moved, none is lost, and running the command again moves the rest.
        print(f"telemetry dlq redrive: queue unavailable, run it again: {exc}", file=sys.stderr)
        return 1
    event(log, "dlq_redriven", messages=n)
    print(f"redrove {n} message(s) to the queue")
    return 0
