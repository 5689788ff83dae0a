"""`telemetry aggregate`: aggregate the hours that changed, then curate the closed ones."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from telemetry.domain.errors import CorruptRawFile, StorageUnavailable
from telemetry.domain.lake import format_hour, parse_hour
from telemetry.entrypoints.cli.common import Invocation
from telemetry.entrypoints.container import Container, check_backends
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry")
T = TypeVar("T")


def add_parser(sub: Any) -> None:
    ap = sub.add_parser("aggregate", help="aggregate changed hours",
                        description="Aggregate the hours whose raw files changed since the "
                        "last run (every hour the first time), or one --hour; then curate the "
                        "closed hours that changed (docs/curated.md; TELEMETRY_CURATE=false "
                        "skips it) and retire raw files past TELEMETRY_RAW_RETENTION.")
    ap.add_argument("--hour", help="one UTC hour, e.g. 2026-11-29T01")
    ap.add_argument("--jobs", type=int,
                    help="processes: hours in parallel, or one hour's files split over them "
                    "(default: the usable CPUs)")
    ap.set_defaults(run=run)


def per_process(container: Container, build: Callable[[Container], T]) -> Callable[[], T]:
    """`build(container)`, for the job runners to call in the process that runs the jobs: in a
    forked pool process, the container's singletons are made anew first, so that it talks to
    the queue and the lake through clients of its own (a boto3 client is not fork-safe)."""
    parent = os.getpid()

    def make() -> T:
        if os.getpid() != parent:
            container.reset_singletons()
        return build(container)

    return make


def run(args: argparse.Namespace, inv: Invocation) -> int:
    try:
        return _run(args, inv)
    except (CorruptRawFile, StorageUnavailable) as exc:
        # Hours done before it are written and recorded: a run after the fix goes on from there.
        print(f"telemetry aggregate: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, inv: Invocation) -> int:
    from telemetry.entrypoints import aggregate_jobs

    jobs = aggregate_jobs.default_jobs() if args.jobs is None else args.jobs
    s = inv.settings()
    container = inv.container()
    check_backends(container, s)
    service = container.aggregate_hours()
    make_service = per_process(container, lambda c: c.aggregate_hours())
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
        run_hours = aggregate_jobs.with_progress(aggregate_jobs.runner(make_service, jobs))
        results = list(run_hours([(hour, inputs.get(format_hour(hour), keys))]))
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

        make_curation = per_process(container, lambda c: c.curate_hours())
        curate(curation, raw, curate_jobs.runner(make_curation, jobs))
    return 0


def curate(curation: Any, raw: dict[str, list[str]], run_hours: Any) -> None:
    """Curate the closed hours that changed, then retire raw files (when configured)."""
    curated = curation.changed(raw, run_hours)
    for c in curated:
        event(log, "hour_curated", hour=format_hour(c.hour), parts=len(c.parts),
              readings=c.readings, raw_records=c.raw_records, raw_files=c.raw_files,
              bytes=c.bytes, removed=c.removed)
    retired = curation.retire(raw)
    for t in retired:
        event(log, "raw_retired", hour=format_hour(t.hour), files=len(t.removed))
    print(f"curated {len(curated)} hour(s)"
          + (f", retired the raw files of {len(retired)} hour(s)" if retired else ""))
