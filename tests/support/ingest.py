"""The HTTP path without HTTP: accept a request's readings, then send their messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from telemetry.domain.accept import AcceptReadings
from telemetry.domain.api_keys import Principal
from telemetry.domain.ports.clock import Clock
from telemetry.domain.ports.sending import MessageSender
from telemetry.domain.readings import Reading, ReadingRules


@dataclass(frozen=True, slots=True)
class Sent:
    reading_ids: list[str]
    messages: int


class SyncIngest:
    """`AcceptReadings`, then `send`, in the caller's thread: what ingest does for a request,
    for tests and benchmarks that need readings in a queue."""

    def __init__(self, queue: MessageSender, clock: Clock, rules: ReadingRules) -> None:
        self.queue = queue
        self.accept = AcceptReadings(queue, clock, rules)

    def execute(self, readings: Sequence[Reading], principal: Principal | None) -> Sent:
        accepted = self.accept.execute(readings, principal)
        self.queue.send(accepted.messages)  # raises QueueUnavailable
        return Sent(accepted.reading_ids, len(accepted.messages))
