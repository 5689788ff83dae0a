"""/readyz calls the queue and the storage: one probe at a time, its answer kept a second, so a
flood of probes is not a flood of calls to them."""

from __future__ import annotations

import asyncio
import time

import httpx

from telemetry.adapters.memory import MemoryQueue
from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.http.operations import READY_CACHE_SECONDS
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import make_container, with_queue


class SlowQueue(MemoryQueue):
    """A queue whose health check takes a while, and says how often it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        time.sleep(0.2)


async def _probe(app: object, n: int) -> list[int]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(n)))
    return [a.status_code for a in answers]


def test_concurrent_probes_make_one_check_and_the_answer_is_kept_briefly() -> None:
    settings = Settings(queue="memory", storage="memory")
    queue = SlowQueue()
    apps = create_apps(with_queue(make_container(settings), queue))
    assert asyncio.run(_probe(apps.ops, 20)) == [200] * 20
    assert queue.checks == 1
    assert asyncio.run(_probe(apps.ops, 5)) == [200] * 5
    assert queue.checks == 1  # within the second: the kept answer
    time.sleep(READY_CACHE_SECONDS)
    assert asyncio.run(_probe(apps.ops, 5)) == [200] * 5
    assert queue.checks == 2
