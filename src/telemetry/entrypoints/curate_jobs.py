"""`telemetry aggregate --jobs N`, the curation's share: closed hours curated in parallel
processes, one hour each (decoding, sorting and compressing an hour is CPU-bound Python).

The processes write the hours' files; the parent records each hour in the state as its result
comes back, so the state file has one writer. Processes are forked, as in `aggregate_jobs`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime

from telemetry.domain.curation import CurateHours, CurateResult, HourRunner

MakeCuration = Callable[[], CurateHours]
Todo = Sequence[tuple[datetime, list[str]]]


def runner(make: MakeCuration, jobs: int) -> HourRunner:
    return lambda todo: run(make, todo, jobs)


def run(make: MakeCuration, todo: Todo, jobs: int) -> Iterator[CurateResult]:
    if jobs <= 1 or len(todo) <= 1:
        service = make()
        for hour, keys in todo:
            yield service.write(hour, keys)
        return
    # Largest hours first, so that the last one to finish is a small one.
    order = sorted(todo, key=lambda t: -len(t[1]))
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=ctx, initializer=_init,
                             initargs=(make,)) as pool:
        futures = [pool.submit(_write, hour, keys) for hour, keys in order]
        for f in as_completed(futures):
            yield f.result()


_service: list[CurateHours] = []  # this pool process's service, made once


def _init(make: MakeCuration) -> None:
    _service.append(make())


def _write(hour: datetime, keys: list[str]) -> CurateResult:
    return _service[0].write(hour, keys)
