"""The composition root: configuration -> adapters -> use cases.

Built by the entrypoints (`create_container`), never at import time. Tests override any provider
(`container.queue.override(providers.Object(fake))`) instead of patching modules; the crash tests
hand a container so overridden to the command line (`cli.main(argv, container=...)`).

Every long-lived object of a process comes from here: the adapters, the use cases, and what the
entrypoints run on them (the ingest's metrics and sender threads, the worker and its observers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.adapters.clock import SystemClock
from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.adapters.memory import MemoryQueue, MemoryStorage
from telemetry.adapters.sqlite_queue import SqliteQueue
from telemetry.domain.accept import AcceptReadings
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.api_keys import Authenticator
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.ratelimit import RateLimiter
from telemetry.domain.readings import ReadingRules
from telemetry.entrypoints.settings import ConfigError, Settings

_CREATE_HINT = "create it with `telemetry aws init` (docs/deploy-aws.md)"


def _sqs_queue(**kwargs: Any) -> Any:
    from telemetry.adapters.aws_client import AwsSetupError
    from telemetry.adapters.sqs import SqsQueue  # boto3 is imported only when SQS is chosen
    from telemetry.domain.errors import QueueUnavailable

    url = kwargs.get("queue_url")
    try:
        return SqsQueue.connect(**kwargs)
    except AwsSetupError as exc:
        raise ConfigError(str(exc)) from None
    except QueueUnavailable as exc:
        # The adapter reads the queue's attributes at start: a wrong URL, region or permission
        # stops the process here, with the setting named.
        hint = f"; {_CREATE_HINT}" if "NonExistentQueue" in str(exc) else ""
        raise ConfigError(f"TELEMETRY_SQS_QUEUE_URL={url!r}: {exc}{hint}") from None


def _curate_hours(storage: Any, clock: Any, *, curated_format: str, grace: float,
                  part_bytes: int, raw_retention: float,
                  step: Callable[[str], None] | None = None) -> Any:
    from telemetry.domain.curation import CuratedFormat, CurateHours, JsonLinesGzip

    fmt: CuratedFormat
    if curated_format == "parquet":
        try:
            from telemetry.adapters.parquet import ParquetFormat
        except ImportError as exc:
            raise ConfigError(f"TELEMETRY_CURATED_FORMAT=parquet: {exc}") from exc
        fmt = ParquetFormat()
    else:
        fmt = JsonLinesGzip()
    return CurateHours(storage, clock, fmt, grace=grace, part_bytes=part_bytes,
                       raw_retention=raw_retention or None, step=step)


def _ingest_metrics() -> Any:
    from telemetry.entrypoints.metrics import IngestMetrics  # prometheus_client: serve only

    return IngestMetrics()


def _sender(queue: Any, kind: str) -> Any:
    from telemetry.entrypoints.http.sender import SEND_THREADS, SEND_THREADS_ONE_WRITER, Sender

    # SQS sends wait on the network side by side; SQLite and memory sends take turns.
    return Sender(queue.send, SEND_THREADS if kind == "sqs" else SEND_THREADS_ONE_WRITER)


def _worker_observers(settings: Settings, drain: Any) -> Any:
    from telemetry.entrypoints.worker_observers import observers

    return observers(settings, drain)


def _worker(drain: Any, stop: threading.Event, clock: Any, settings: Settings,
            watch: Any) -> Any:
    from telemetry.entrypoints.worker import Worker

    return Worker(drain, stop, clock=clock, shutdown_deadline=settings.shutdown_deadline,
                  observers=watch.all)


def _rate_limiter(settings: Settings) -> Any:
    if settings.rate_limit_file is None:
        return RateLimiter(settings.rate_limit, settings.rate_burst)
    from telemetry.adapters.shared_ratelimit import SharedRateLimiter

    try:
        return SharedRateLimiter(settings.rate_limit_file, settings.rate_limit,
                                 settings.rate_burst)
    except OSError as exc:
        raise ConfigError(f"TELEMETRY_RATE_LIMIT_FILE: {exc}") from None


def _s3_storage(**kwargs: Any) -> Any:
    from telemetry.adapters.aws_client import AwsSetupError
    from telemetry.adapters.s3 import S3Storage

    try:
        return S3Storage(**kwargs)
    except AwsSetupError as exc:
        raise ConfigError(str(exc)) from None


class Container(containers.DeclarativeContainer):
    # Decoded and checked once (load_settings), handed in once (create_container).
    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)

    queue = providers.Selector(
        settings.provided.queue,
        sqlite=providers.Singleton(
            SqliteQueue,
            settings.provided.queue_path,
            visibility_timeout=settings.provided.visibility_timeout,
            max_receives=settings.provided.max_receives,
            max_message_bytes=settings.provided.max_message_bytes,
        ),
        memory=providers.Singleton(
            MemoryQueue,
            visibility_timeout=settings.provided.visibility_timeout,
            max_receives=settings.provided.max_receives,
            max_message_bytes=settings.provided.max_message_bytes,
        ),
        sqs=providers.Singleton(_sqs_queue, queue_url=settings.provided.sqs_queue_url),
    )

    storage = providers.Selector(
        settings.provided.storage,
        filesystem=providers.Singleton(FilesystemStorage, settings.provided.lake_dir),
        memory=providers.Singleton(MemoryStorage),
        s3=providers.Singleton(_s3_storage, bucket=settings.provided.s3_bucket,
                               prefix=settings.provided.s3_prefix),
    )

    api_keys = providers.Singleton(FileApiKeyStore, settings.provided.api_keys_path)

    rules = providers.Singleton(
        ReadingRules,
        max_signals=settings.provided.max_signals,
        max_clock_skew=providers.Factory(timedelta, seconds=settings.provided.max_clock_skew),
        max_batch=settings.provided.max_batch,
        max_lateness=providers.Factory(timedelta, seconds=settings.provided.max_lateness),
        max_hours=settings.provided.max_request_hours,
    )

    batch_policy = providers.Singleton(
        BatchPolicy,
        max_readings=settings.provided.batch_max_readings,
        max_bytes=settings.provided.batch_max_bytes,
        max_age_seconds=settings.provided.batch_max_age,
        max_open_hours=settings.provided.batch_max_open_hours,
    )

    authenticator = providers.Singleton(Authenticator, api_keys)
    # the per-key token buckets: the process's own, or a file's that several processes share
    rate_limiter = providers.Singleton(_rate_limiter, settings)
    accept_readings = providers.Singleton(AcceptReadings, queue, clock, rules)
    drain_batches = providers.Factory(
        DrainBatches, queue, storage, clock, batch_policy, compress=settings.provided.compress,
        receive_max=settings.provided.receive_max,
        partials_every=settings.provided.partials_every,
    )
    aggregate_hours = providers.Factory(AggregateHours, storage)
    curate_hours = providers.Factory(
        _curate_hours, storage, clock, curated_format=settings.provided.curated_format,
        grace=settings.provided.curate_grace, part_bytes=settings.provided.curated_part_bytes,
        raw_retention=settings.provided.raw_retention,
    )

    # `serve`: one of each per server process, shared by its public and operations apps
    ingest_metrics = providers.Singleton(_ingest_metrics)
    # the threads that run the queue's sends
    sender = providers.Singleton(_sender, queue, settings.provided.queue)

    # `worker`: the drain loop, what it stops on (the signal handlers set it), and what
    # watches it (metrics, with their listener when TELEMETRY_WORKER_METRICS_PORT is on; the
    # state published to the lake)
    worker_stop = providers.Singleton(threading.Event)
    worker_observers = providers.Singleton(_worker_observers, settings, drain_batches)
    worker = providers.Singleton(_worker, drain_batches, worker_stop, clock, settings,
                                 worker_observers)


def check_backends(container: Container, settings: Settings) -> None:
    """Build the cloud adapters now, so that a missing region, credentials, queue or bucket
    stops the command at start (ConfigError) rather than in a server process or a thread."""
    if settings.queue == "sqs":
        container.queue()
    if settings.storage == "s3":
        from telemetry.adapters.s3 import bucket_missing

        container.storage()
        if bucket_missing(settings.s3_bucket):
            raise ConfigError(f"TELEMETRY_S3_BUCKET={settings.s3_bucket!r}: no such bucket; "
                              f"{_CREATE_HINT}")


def create_container(settings: Settings) -> Container:
    return Container(settings=settings)
