"""`telemetry worker`: drain the queue into the lake, until a signal or (`--once`) drained."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.ports.depth import QueueDepth, QueueDepthProbe
from telemetry.entrypoints.cli.common import Invocation
from telemetry.entrypoints.container import check_backends
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry")


def add_parser(sub: Any) -> None:
    wp = sub.add_parser("worker", help="drain the queue into the lake",
                        description="Drain the queue into the lake until SIGTERM/SIGINT "
                        "(flush, delete, exit 0).")
    wp.add_argument("--once", action="store_true",
                    help="drain what is visible, say what is left (in flight, dead-lettered), "
                    "then exit")
    wp.add_argument("--wait", action="store_true",
                    help="with --once: also wait for the messages in flight (received by "
                    "another or a killed worker) to become visible again, and drain them")
    wp.set_defaults(run=run)


def run(args: argparse.Namespace, inv: Invocation) -> int:
    s = inv.settings()
    container = inv.container()
    check_backends(container, s)
    if args.wait and not args.once:
        print("telemetry worker: --wait goes with --once", file=sys.stderr)
        return 2
    deadline = s.shutdown_deadline
    watch = container.worker_observers()  # its listener, when on, is up from here
    worker = container.worker()
    stop = container.worker_stop()

    def past_deadline() -> None:
        # A write still hanging (a slow lake): whatever is not stored yet is not deleted
        # either, and the queue redelivers it after its visibility timeout.
        event(log, "shutdown_deadline_passed", logging.ERROR, deadline_s=deadline)
        logging.shutdown()
        os._exit(1)

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            past_deadline()  # a second signal: the operator will not wait
        event(log, "stopping", signal=signal.Signals(signum).name, deadline_s=deadline)
        # The worker gives up on a failing lake by itself just before this; the timer is for
        # a write that never returns.
        worker.request_stop(deadline)
        timer = threading.Timer(deadline, past_deadline)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    event(log, "worker_started", queue=s.queue, storage=s.storage, once=args.once,
          metrics=watch.server.url + "/metrics" if watch.server else None,
          state_key=watch.publisher.key)
    try:
        stats = worker.run(once=args.once)
        if args.once:
            queue = container.queue()
            depth = report_once(queue, stats)
            while args.wait and worker.clean and depth is not None and depth.in_flight \
                    and not stop.is_set():
                # What another (or a killed) worker holds comes back when its timeout passes.
                until = depth.visible_again_by or datetime.now(UTC)
                wait_s = min(max((until - datetime.now(UTC)).total_seconds(), 0.0) + 0.5, 60.0)
                print(f"waiting {wait_s:.0f} s for {depth.in_flight} message(s) in flight",
                      flush=True)
                if stop.wait(wait_s):
                    break
                stats = worker.run(once=True)
                depth = report_once(queue, stats)
    finally:
        watch.close()
    event(
        log,
        "worker_stopped",
        level=logging.INFO if worker.clean else logging.ERROR,
        clean=worker.clean,
        files=stats.files,
        readings=stats.readings,
        bytes=stats.bytes,
        received_to_stored=stats.received_to_stored.summary(),
        ts_to_stored=stats.ts_to_stored.summary(),
    )
    return 0 if worker.clean else 1


def report_once(queue: Any, stats: Any) -> QueueDepth | None:
    """What `worker --once` drained, and what it left in the queue."""
    print(f"drained: {stats.files:,} file(s), {stats.readings:,} reading(s), "
          f"{stats.bytes:,} bytes", flush=True)
    if not isinstance(queue, QueueDepthProbe):
        return None
    try:
        d: QueueDepth = queue.depth()
    except QueueUnavailable as exc:
        print(f"left: unknown, the queue did not answer: {exc}", flush=True)
        return None
    about = "" if d.exact else "about "
    parts = [f"{about}{d.visible:,} visible", f"{about}{d.in_flight:,} in flight"]
    if d.in_flight and d.visible_again_by is not None:
        parts[-1] += (f" (visible again by {d.visible_again_by:%Y-%m-%dT%H:%M:%SZ} at the latest;"
                      " --once --wait drains them too)")
    if d.dead_letters is None:
        parts.append("dead-lettered unknown (the dead-letter queue could not be read)")
    else:
        parts.append(f"{about}{d.dead_letters:,} dead-lettered"
                     + (" (telemetry dlq list)" if d.dead_letters else ""))
    print("left: " + ", ".join(parts), flush=True)
    event(log, "worker_once_left", visible=d.visible, in_flight=d.in_flight,
          dead_letters=d.dead_letters, exact=d.exact,
          visible_again_by=d.visible_again_by.isoformat() if d.visible_again_by else None)
    return d
