"""`telemetry ...`: one console script, a subcommand per stage."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from telemetry import __version__
from telemetry.adapters.private_files import make_private_dirs, open_to_others
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.lake import format_hour, parse_hour
from telemetry.domain.ports.depth import QueueDepth, QueueDepthProbe
from telemetry.entrypoints import logs, simulate
from telemetry.entrypoints.container import check_backends, create_container
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.settings import ConfigError, Settings, install_hint, load_settings

log = logging.getLogger("telemetry")


def _settings() -> Settings:
    s = load_settings()
    logs.configure(s.log_format, s.log_level)
    if open_to_others(s.data_dir):
        event(log, "data_dir_open_to_others", logging.WARNING, data_dir=str(s.data_dir),
              advice=f"chmod 700 {s.data_dir}: readings hold GPS positions")
    return s


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from telemetry.entrypoints.metrics import MULTIPROC_ENV
    from telemetry.entrypoints.slow_clients import HeaderDeadlineProtocol

    s = _settings()
    if (args.tls_certfile is None) != (args.tls_keyfile is None):
        raise ConfigError("serve: --tls-certfile and --tls-keyfile go together")
    for path in (args.tls_certfile, args.tls_keyfile):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"serve: cannot read {path}")
    make_private_dirs(s.data_dir)
    check_backends(create_container(s), s)  # before uvicorn, which would print a traceback
    # Several processes share the port: each keeps its metrics in this directory, and whichever
    # answers /metrics sums them all (docs/adr/0008-prometheus-metrics.md).
    metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="telemetry-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            "telemetry.entrypoints.http.server:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            http=HeaderDeadlineProtocol,
            ssl_certfile=args.tls_certfile,
            ssl_keyfile=args.tls_keyfile,
            log_level=s.log_level.lower(),
            log_config=logs.uvicorn_log_config(s.log_format, s.log_level),
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


# ------------------------------------------------------------------ worker


def cmd_worker(args: argparse.Namespace) -> int:
    from telemetry.entrypoints.worker import Worker
    from telemetry.entrypoints.worker_observers import observers

    s = _settings()
    container = create_container(s)
    check_backends(container, s)
    stop = threading.Event()
    deadline = s.shutdown_deadline
    drain = container.drain_batches()
    watch = observers(s, drain)
    worker = Worker(drain, stop, clock=container.clock(), shutdown_deadline=deadline,
                    observers=watch.all)

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
    if args.wait and not args.once:
        print("telemetry worker: --wait goes with --once", file=sys.stderr)
        watch.close()
        return 2
    event(log, "worker_started", queue=s.queue, storage=s.storage, once=args.once,
          metrics=watch.server.url + "/metrics" if watch.server else None,
          state_key=watch.publisher.key)
    try:
        stats = worker.run(once=args.once)
        if args.once:
            queue = container.queue()
            depth = _report_once(queue, stats)
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
                depth = _report_once(queue, stats)
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


def _report_once(queue: Any, stats: Any) -> QueueDepth | None:
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


# ------------------------------------------------------------------ aggregate


def cmd_aggregate(args: argparse.Namespace) -> int:
    from telemetry.domain.aggregate import AggregateHours
    from telemetry.entrypoints import aggregate_jobs

    jobs = aggregate_jobs.default_jobs() if args.jobs is None else args.jobs
    s = _settings()
    container = create_container(s)
    check_backends(container, s)
    service = container.aggregate_hours()

    def make_service() -> AggregateHours:  # in each process: its own storage client
        return create_container(s).aggregate_hours()

    if jobs < 1:
        print("telemetry aggregate: --jobs must be at least 1", file=sys.stderr)
        return 2
    curation = container.curate_hours() if s.curate else None
    if args.hour:
        try:
            hour = parse_hour(args.hour)
        except ValueError:
            print(f"telemetry aggregate: --hour {args.hour!r}: expected 2026-11-29T01",
                  file=sys.stderr)
            return 2
        keys = service.hour_keys(hour)
        inputs = {format_hour(hour): keys}
        if curation is not None:
            inputs = curation.aggregation_inputs(inputs)
        run = aggregate_jobs.with_progress(aggregate_jobs.runner(make_service, jobs))
        results = list(run([(hour, inputs.get(format_hour(hour), keys))]))
        raw = {format_hour(hour): keys} if keys else {}
    else:
        raw = service.raw_hours()
        inputs = raw if curation is None else curation.aggregation_inputs(raw)
        results = service.changed(
            aggregate_jobs.with_progress(aggregate_jobs.runner(make_service, jobs)), inputs)
    for r in results:
        event(log, "hour_aggregated", hour=format_hour(r.hour), key=r.key, files=r.files,
              raw_records=r.raw_records, readings=r.readings, vehicles=r.vehicles,
              files_from_partials=r.from_partials)
    print(f"aggregated {len(results)} hour(s)")
    if curation is not None:
        from telemetry.entrypoints import curate_jobs

        def make_curation() -> Any:  # in each process: its own storage client
            return create_container(s).curate_hours()

        _curate(curation, raw, curate_jobs.runner(make_curation, jobs))
    return 0


def _curate(curation: Any, raw: dict[str, list[str]], run: Any) -> None:
    """Curate the closed hours that changed, then retire raw files (when configured)."""
    curated = curation.changed(raw, run)
    for c in curated:
        event(log, "hour_curated", hour=format_hour(c.hour), parts=len(c.parts),
              readings=c.readings, raw_records=c.raw_records, raw_files=c.raw_files,
              bytes=c.bytes, removed=c.removed)
    retired = curation.retire(raw)
    for t in retired:
        event(log, "raw_retired", hour=format_hour(t.hour), files=len(t.removed))
    print(f"curated {len(curated)} hour(s)"
          + (f", retired the raw files of {len(retired)} hour(s)" if retired else ""))


# ------------------------------------------------------------------ dlq


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from telemetry.domain.errors import QueueUnavailable

    s = _settings()
    try:
        dead = create_container(s).queue().dead_letters(args.max)
    except QueueUnavailable as exc:
        print(f"telemetry dlq list: queue unavailable, try again: {exc}", file=sys.stderr)
        return 1
    for m in dead:
        head = m.body.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
        print(json.dumps({"message_id": m.message_id, "receive_count": m.receive_count,
                          "bytes": len(m.body), "head": head}))
    return 0


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from telemetry.domain.errors import QueueUnavailable

    s = _settings()
    try:
        n = create_container(s).queue().redrive()
    except QueueUnavailable as exc:
        # Each message is sent before it is deleted from the dead-letter queue: some may have
        # moved, none is lost, and running the command again moves the rest.
        print(f"telemetry dlq redrive: queue unavailable, run it again: {exc}", file=sys.stderr)
        return 1
    event(log, "dlq_redriven", messages=n)
    print(f"redrove {n} message(s) to the queue")
    return 0


# ------------------------------------------------------------------ keys


def cmd_keys_create(args: argparse.Namespace) -> int:
    s = _settings()
    store = create_container(s).api_keys()
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    try:
        stored = new_stored_key(
            key_id, secret, args.name, args.vehicles.split(","), datetime.now(UTC)
        )
    except ValueError as exc:
        print(f"telemetry keys create: {exc}", file=sys.stderr)
        return 2
    store.add(stored)
    print(f"created key {args.name!r} (id {key_id}) for {','.join(stored.vehicles)}")
    print("store it now: it is shown once and never again")
    print(format_key(key_id, secret))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    s = _settings()
    for k in create_container(s).api_keys().all():
        row = {"id": k.key_id, "name": k.name, "vehicles": list(k.vehicles),
               "created_at": k.created_at.isoformat(), "revoked": k.revoked}
        print(json.dumps(row))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    s = _settings()
    n = create_container(s).api_keys().revoke(args.key)
    print(f"revoked {n} key(s)")
    return 0 if n else 1


# ------------------------------------------------------------------ parser


def _missing_extra(command: str, extra: str, error: str) -> Any:
    def run(_args: argparse.Namespace) -> int:
        print(f"telemetry {command}: needs the {extra} extra ({error}): {install_hint(extra)}",
              file=sys.stderr)
        return 2

    return run


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except where there is none to show, the help already says it, or
    the value could be a secret (a key taken from the environment)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        nothing = d is None or d is False or d in ("", argparse.SUPPRESS)
        if nothing or "default" in text or "key" in action.dest or not action.option_strings:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="telemetry",
        description="Fleet telemetry pipeline. Configuration: TELEMETRY_* environment "
        "variables (see README and docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("serve", help="run the ingest HTTP service",
                        description="Run the ingest HTTP service.")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0: every interface)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    sp.add_argument("--workers", type=int, default=1, help="server processes")
    sp.add_argument("--tls-certfile", metavar="PEM",
                    help="serve HTTPS with this certificate (chain), with --tls-keyfile")
    sp.add_argument("--tls-keyfile", metavar="PEM", help="the certificate's private key")
    sp.set_defaults(func=cmd_serve)

    wp = sub.add_parser("worker", help="drain the queue into the lake",
                        description="Drain the queue into the lake until SIGTERM/SIGINT "
                        "(flush, delete, exit 0).")
    wp.add_argument("--once", action="store_true",
                    help="drain what is visible, say what is left (in flight, dead-lettered), "
                    "then exit")
    wp.add_argument("--wait", action="store_true",
                    help="with --once: also wait for the messages in flight (received by "
                    "another or a killed worker) to become visible again, and drain them")
    wp.set_defaults(func=cmd_worker)

    ap = sub.add_parser("aggregate", help="aggregate changed hours",
                        description="Aggregate the hours whose raw files changed since the "
                        "last run (every hour the first time), or one --hour; then curate the "
                        "closed hours that changed (docs/curated.md; TELEMETRY_CURATE=false "
                        "skips it) and retire raw files past TELEMETRY_RAW_RETENTION.")
    ap.add_argument("--hour", help="one UTC hour, e.g. 2026-11-29T01")
    ap.add_argument("--jobs", type=int,
                    help="processes: hours in parallel, or one hour's files split over them "
                    "(default: the usable CPUs)")
    ap.set_defaults(func=cmd_aggregate)

    simulate.add_parser(sub)
    try:
        from telemetry.entrypoints import replay
    except ImportError as exc:  # the can extra is not installed: say so when asked for
        rp = sub.add_parser("replay", help="decode a real CAN log with a DBC file and post its "
                            "readings (needs the can extra)", add_help=False,
                            description="Needs the can extra: " + install_hint("can"))
        rp.set_defaults(func=_missing_extra("replay", "can", str(exc)), takes_any_arguments=True)
    else:
        replay.add_parser(sub)

    kp = sub.add_parser("keys", help="create, list and revoke API keys",
                        description="Manage API keys. Only hashes are stored.")
    ksub = kp.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key; prints it once, as the last line",
                         description="Create a key. It is printed once, as the last line.")
    kc.add_argument("--name", required=True)
    kc.add_argument("--vehicles", required=True,
                    help="comma-separated patterns: exact ids, prefix*, or *")
    kc.set_defaults(func=cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)",
                         description="List keys: id, name, vehicles, revoked.")
    kl.set_defaults(func=cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key by name or id",
                         description="Revoke every key with this name or id.")
    kr.add_argument("key", help="key name or id")
    kr.set_defaults(func=cmd_keys_revoke)

    dp = sub.add_parser("dlq", help="inspect and replay dead-lettered messages",
                        description="Messages received max-receives times without being "
                        "stored land in the dead-letter queue. List them, or move them back.")
    dsub = dp.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="list dead-lettered messages (one JSON line each)",
                         description="List dead-lettered messages without consuming them.")
    dl.add_argument("--max", type=int, default=100, help="at most this many")
    dl.set_defaults(func=cmd_dlq_list)
    dr = dsub.add_parser("redrive", help="move every dead-lettered message back to the queue",
                         description="Move every dead-lettered message back to the queue, "
                         "with its receive count reset.")
    dr.set_defaults(func=cmd_dlq_redrive)

    from telemetry.entrypoints import demo

    demo.add_parser(sub)

    from telemetry.entrypoints import aws, report, triggers

    aws.add_parser(sub)
    triggers.add_parser(sub)
    report.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A command whose extra is missing takes any arguments, to answer with what to install.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error("unrecognized arguments: " + " ".join(unknown))
    try:
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


if __name__ == "__main__":
    raise SystemExit(main())
