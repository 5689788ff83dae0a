"""The threads that run the blocking `queue.send` for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

# Threads for queue sends: as many sends may be inside the queue adapter at once (SQS sends
# wait on the network side by side). A send waiting for a free thread counts against the
# enqueue timeout like one waiting for the queue, so a hung queue still answers 503 in time.
SEND_THREADS = 64

# For a queue that writes one send at a time (SQLite: one writer; the memory queue: one lock),
# more threads only wait inside it: two are one sending and one gathering every job that
# arrives meanwhile into the next send. A thread more takes a job of its own, a wake-up and a
# send that only waits its turn (figures in docs/benchmarks.md).
SEND_THREADS_ONE_WRITER = 2

# A list, not a tuple: a request that stops waiting empties its job, so the bodies of sends
# abandoned while the queue hangs are not held until a thread comes to skip them.
_Job = list[Any]  # [loop, done future, bodies]

# At most this many requests' messages go into one `queue.send`: a bound on what one slow send
# holds up, well above the requests in flight of a busy process.
MAX_JOBS_PER_SEND = 64


class Sender:
    """Threads that run the blocking `queue.send` for the event loop.

    Per request this is a queue put and a timer: cheaper than anyio's to_thread (capacity
    limiter, cancel scopes) or an executor's futures (figures in docs/benchmarks.md). A thread
    that takes a job also takes every job waiting behind it and sends all their messages in
    one `queue.send`, then wakes the loop once for all of them: under load, one send, one
    commit and one wake-up serve many requests instead of a thread switch and a group-commit
    hand-over per request. They share the outcome: if the send fails, each of them answers
    the failure (the SQLite queue's group commit shares it the same way); a retry carries the
    same reading ids. Threads start on first use and stay.
    """

    def __init__(self, send: Callable[[list[bytes]], None], threads: int) -> None:
        self._send = send
        self._threads = threads
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._started = 0

    async def send(self, messages: list[bytes], timeout: float) -> None:
        """Raise TimeoutError after `timeout` s. The send is abandoned, not stopped then: one
        not started yet never runs, one running may still enqueue after the 503. The client's
        retry carries the same reading ids, and every downstream stage dedupes on them."""
        if self._started < self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _expire, done)
        job: _Job = [loop, done, messages]
        self._jobs.put(job)
        try:
            await done
        finally:
            timer.cancel()
            if not done.done():  # the request was cancelled: the job must not run any more
                done.cancel()
            job[2] = None

    def _start(self) -> None:
        while self._started < self._threads:
            threading.Thread(target=self._run, name=f"enqueue-{self._started}",
                             daemon=True).start()
            self._started += 1

    def _run(self) -> None:
        jobs = self._jobs
        get, more, send = jobs.get, jobs.get_nowait, self._send
        stopping = False
        while not stopping and (job := get()) is not None:
            batch = [job]
            while len(batch) < MAX_JOBS_PER_SEND:
                try:
                    nxt = more()
                except Empty:
                    break
                if nxt is None:  # stop: end after this batch
                    stopping = True
                    break
                batch.append(nxt)
            # Each job read once: its request may empty it meanwhile. Skipped: timed out, or
            # the request went away (it emptied its job).
            live = [(loop, done, bodies) for loop, done, bodies in batch
                    if bodies is not None and not done.done()]
            if not live:
                continue
            messages = live[0][2] if len(live) == 1 else [m for j in live for m in j[2]]
            error: BaseException | None = None
            try:
                send(messages)
            except BaseException as exc:  # handed to the requests, which map it
                error = exc
            by_loop: dict[Any, list[asyncio.Future[None]]] = {}
            for loop, done, _ in live:
                by_loop.setdefault(loop, []).append(done)
            for loop, futures in by_loop.items():
                # RuntimeError: the loop is closed, nobody is waiting any more
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle_all, futures, error)

    def stop(self) -> None:
        """Let the threads end once the sends queued before this are done."""
        for _ in range(self._started):
            self._jobs.put(None)
        self._started = 0


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


def _settle_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in futures:
        if done.done():  # expired meanwhile: the request has answered 503
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
