"""Every role one adapter plays, for tests that exercise an adapter whole."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from telemetry.domain.ports.api_keys import ApiKeyAdmin, ApiKeyLookup
from telemetry.domain.ports.consuming import MessageConsumer
from telemetry.domain.ports.dead_letters import DeadLetters
from telemetry.domain.ports.depth import QueueDepthProbe
from telemetry.domain.ports.health import HealthCheck
from telemetry.domain.ports.sending import MessageSender


@runtime_checkable
class Queue(MessageSender, MessageConsumer, DeadLetters, HealthCheck, QueueDepthProbe, Protocol):
    """A queue adapter: what ingest, the worker, the dlq commands, readiness and metrics use."""


@runtime_checkable
class ApiKeyStore(ApiKeyLookup, ApiKeyAdmin, Protocol):
    """An API key store: what authentication and the keys commands use."""


QUEUE_ROLES = (MessageSender, MessageConsumer, DeadLetters, HealthCheck, QueueDepthProbe)
API_KEY_ROLES = (ApiKeyLookup, ApiKeyAdmin)
