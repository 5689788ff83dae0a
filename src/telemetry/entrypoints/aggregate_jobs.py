"""`telemetry aggregate --jobs N`: hours aggregated in parallel processes.

Aggregation is CPU-bound Python, so threads would not help. With at least as many hours as
jobs, each process takes whole hours. With fewer, an hour's files are split over the processes
and the partial results merged (`HourSlice`, `combine_slices`), so a single-hour lake uses every
core too; where the compiled kernel settles the hour, the processes split its vehicles instead,
each scanning every file. Either way the result is byte for byte the one of a single process.

Processes are forked: each makes its own service (storage client) with `make_service`, which is
inherited, not pickled.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from telemetry.domain import aggregation
from telemetry.domain.aggregate import AggregateHours, AggregateResult, Todo
from telemetry.domain.hour_slices import SliceResult, fingerprint_salt, shared_ids
from telemetry.entrypoints.progress import Progress

MakeService = Callable[[], AggregateHours]


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def runner(make_service: MakeService, jobs: int) -> Callable[[Todo], Iterator[AggregateResult]]:
    """An `HourRunner` over `jobs` processes."""
    return lambda todo: run(make_service, todo, jobs)


def with_progress(run_hours: Callable[[Todo], Iterator[AggregateResult]]
                  ) -> Callable[[Todo], Iterator[AggregateResult]]:
    """`run_hours` with a progress line: hours done, raw lines a second, time left."""

    def wrapped(todo: Todo) -> Iterator[AggregateResult]:
        bar = Progress("aggregate", len(todo), unit="hours", items_unit="raw lines")
        done = lines = 0
        bar.update(0, 0, force=True)
        try:
            for r in run_hours(todo):
                done += 1
                lines += r.raw_records
                bar.update(done, lines, force=done == len(todo))
                yield r
        finally:
            bar.close()

    return wrapped


def run(make_service: MakeService, todo: Todo, jobs: int) -> Iterator[AggregateResult]:
    """Aggregate and write every hour of `todo`, yielding each result as it is done."""
    with _gc_paused():  # pool processes fork inside, and inherit it
        yield from _run(make_service, todo, jobs)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while hours are aggregated: an hour's lists of a quarter
    million objects were traversed by every full collection, a third of the aggregation's
    time. The aggregation builds no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run(make_service: MakeService, todo: Todo, jobs: int) -> Iterator[AggregateResult]:
    if jobs <= 1 or not todo:
        service = make_service()
        for hour, keys in todo:
            yield service.hour(hour, keys)
    elif len(todo) >= jobs:
        yield from _by_hour(make_service, todo, jobs)
    else:
        service = make_service()
        for hour, keys in todo:
            yield split_hour(service, make_service, hour, keys, jobs)


# ---------------------------------------------------------------- one process per hour

_service: list[AggregateHours] = []  # this pool process's service, made once


def _init(make_service: MakeService) -> None:
    _service.append(make_service())


def _hour(hour: datetime, keys: list[str]) -> AggregateResult:
    return _service[0].hour(hour, keys)


def _by_hour(make_service: MakeService, todo: Todo, jobs: int) -> Iterator[AggregateResult]:
    # Largest hours first, so that the last one to finish is a small one.
    order = sorted(todo, key=lambda t: -len(t[1]))
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init,
                             initargs=(make_service,)) as pool:
        futures = [pool.submit(_hour, hour, keys) for hour, keys in order]
        for f in as_completed(futures):
            yield f.result()


# ---------------------------------------------------------------- one hour over processes


def _split(keys: Sequence[str], parts: int) -> list[list[str]]:
    """Round robin: the lake's files of an hour are of similar size."""
    return [list(keys[i::parts]) for i in range(parts) if keys[i::parts]]


def _part(
    conn: Connection, inherited: list[Connection], make_service: MakeService, hour: datetime,
    keys: list[str],
) -> None:
    for c in inherited:  # the parent's ends of the pipes: only the parent may hold them
        c.close()
    try:
        part = make_service().slice(keys)
        # Fingerprints, not the ids: 8 bytes an identity to send, and no tuple of two strings
        # to pickle and unpickle for each reading.
        conn.send((fingerprint_salt(), part.fingerprints()))
        shared = conn.recv()
        if shared is not None:  # None: another part failed, the parent takes the hour
            conn.send(part.finish_fingerprints(hour, shared))
    except BaseException as exc:  # the parent aggregates the hour itself and reports it
        with suppress(OSError):  # the parent has gone on without this part
            conn.send(exc)
    finally:
        conn.close()


def split_hour(
    service: AggregateHours, make_service: MakeService, hour: datetime, keys: list[str],
    jobs: int,
) -> AggregateResult:
    """One hour, its files split over up to `jobs` processes."""
    groups = _split(sorted(keys), jobs)
    if len(groups) < 2:
        return service.hour(hour, keys)
    # Files with partials are merged, not decoded: far less work than a fork.
    covered = service.partials(hour, keys)
    if len(covered) == len(keys):
        return service.hour(hour, keys, covered)
    if not covered and aggregation.hour_kernel is not None:
        done = _kernel_split(service, hour, keys, jobs)
        if done is not None:
            return done
    ctx = multiprocessing.get_context("fork")
    procs: list[tuple[Any, Connection]] = []
    results: list[Any] = []
    try:
        for group in groups:
            mine, theirs = ctx.Pipe()
            inherited = [c for _, c in procs] + [mine]
            p = ctx.Process(target=_part, args=(theirs, inherited, make_service, hour, group),
                            daemon=True)
            p.start()
            theirs.close()
            procs.append((p, mine))
        prints = [_received(conn) for _, conn in procs]
        shared = None if _failed(prints) or any(
            salt != fingerprint_salt() for salt, _ in prints  # not forks of this process
        ) else shared_ids(fp for _, fp in prints)
        del prints
        for _, conn in procs:
            with suppress(OSError):
                conn.send(shared)
        if shared is not None:
            results = [_received(conn) for _, conn in procs]
    finally:
        _reap(procs)
    if not results or _failed(results):  # the error, if any, raised here as in one process
        return service.hour(hour, keys)
    parts: list[SliceResult | None] = results
    return service.hour_from_slices(hour, keys, parts)


def _kernel_part(
    conn: Connection, inherited: list[Connection], contents: list[bytes | memoryview],
    part: int, parts: int,
) -> None:
    for c in inherited:
        c.close()
    try:
        conn.send(aggregation.scan_raw(contents, part, parts))
    except BaseException as exc:
        with suppress(OSError):
            conn.send(exc)
    finally:
        conn.close()


def _kernel_split(
    service: AggregateHours, hour: datetime, keys: list[str], jobs: int
) -> AggregateResult | None:
    """One hour by the compiled kernel, its vehicles split over `jobs` processes (each scans
    every file, aggregating its own vehicles: no reading identity is in two parts, so the parts
    only add up); None when the kernel leaves the hour to the Python paths."""
    contents = service.contents(keys)  # read once; the forks share the pages
    ctx = multiprocessing.get_context("fork")
    procs: list[tuple[Any, Connection]] = []
    try:
        for part in range(1, jobs):
            mine, theirs = ctx.Pipe()
            inherited = [c for _, c in procs] + [mine]
            p = ctx.Process(target=_kernel_part,
                            args=(theirs, inherited, contents, part, jobs), daemon=True)
            p.start()
            theirs.close()
            procs.append((p, mine))
        scans: list[Any] = [aggregation.scan_raw(contents, 0, jobs)]  # part 0 here, meanwhile
        scans += [_received(conn) for _, conn in procs]
    finally:
        _reap(procs)
    if any(s is None for s in scans) or _failed(scans):
        return None
    raw, agg = aggregation.aggregate_scans(hour, scans)
    return service.write(hour, len(keys), raw, agg)


def _reap(procs: list[tuple[Any, Connection]]) -> None:
    """Close the parent's ends of the pipes and wait for the parts (stopping any that hang)."""
    for p, conn in procs:
        conn.close()
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join()


def _failed(received: list[Any]) -> bool:
    return any(isinstance(x, BaseException) for x in received)


def _received(conn: Connection) -> Any:
    try:
        return conn.recv()
    except EOFError as exc:  # the process died
        return exc
