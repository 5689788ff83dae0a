"""The threads that run the blocking `queue.send` for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

# Threads for queue sends: as many sends may be inside the queue adapter at once (the SQLite
# queue commits concurrent sends as one group; SQS sends wait on the network). A send waiting
# for a free thread counts against the enqueue timeout like one waiting for the queue, so a
# hung queue still answers 503 in time.
SEND_THREADS = 64

# A list, not a tuple: a request that stops waiting empties its job, so the bodies of sends
# abandoned while the queue hangs are not held until a thread comes to skip them.
_Job = list[Any]  # [loop, done future, bodies]


class Sender:
    """Threads that run the blocking `queue.send` for the event loop.

    Per request this is a queue put, a timer and one wake-up of the loop: cheaper per request
    than anyio's to_thread (capacity limiter, cancel scopes) or an executor's futures (figures
    in docs/benchmarks.md). Threads start on first use and stay: the sends of a busy server
    keep them busy.
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
        get, send = self._jobs.get, self._send
        while (job := get()) is not None:
            loop, done, messages = job
            if done.done() or messages is None:  # timed out, or the request went away
                continue
            error: BaseException | None = None
            try:
                send(messages)
            except BaseException as exc:  # handed to the request, which maps it
                error = exc
            # RuntimeError: the loop is closed, nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, error)

    def stop(self) -> None:
        """Let the threads end once the sends queued before this are done."""
        for _ in range(self._started):
            self._jobs.put(None)
        self._started = 0


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # expired meanwhile: the request has answered 503
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
