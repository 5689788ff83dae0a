"""What watches a worker, from the settings: the state it publishes to the lake, and its
Prometheus metrics with their operations listener (`ops.py`) unless TELEMETRY_WORKER_METRICS_PORT
is off, as it is by default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telemetry.domain.drain import DrainBatches, FileWritten, PollResult
from telemetry.domain.ports.depth import QueueDepthProbe
from telemetry.entrypoints.progress import Progress
from telemetry.entrypoints.settings import ConfigError, Settings
from telemetry.entrypoints.worker import WorkerObserver
from telemetry.entrypoints.worker_metrics import WorkerMetrics
from telemetry.entrypoints.worker_publish import StatePublisher

if TYPE_CHECKING:
    from telemetry.entrypoints.ops import OpsListener


@dataclass
class Observers:
    metrics: WorkerMetrics
    publisher: StatePublisher
    server: OpsListener | None = None
    all: list[WorkerObserver] = field(default_factory=list)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop_thread()


def observers(settings: Settings, drain: DrainBatches, *, listen: bool = True) -> Observers:
    """`listen`: serve the metrics when the settings say so. Only then does anything read the
    queue's depth (a look at the queue every few seconds): nobody else sees those gauges."""
    queue = drain.queue
    port = settings.worker_metrics_port if listen else None
    depth = queue.depth if port is not None and isinstance(queue, QueueDepthProbe) else None
    metrics = WorkerMetrics(depth)
    publisher = StatePublisher(drain.storage, window_s=settings.trigger_window,
                               every=settings.worker_state_every, clock=drain.clock)
    out = Observers(metrics, publisher, all=[metrics, publisher])
    if port is not None:
        from telemetry.entrypoints.ops import OpsListener, registry_app  # uvicorn: only then

        host = settings.worker_metrics_host
        server = OpsListener(registry_app(metrics.registry), host, port,
                             ("TELEMETRY_WORKER_METRICS_HOST", "TELEMETRY_WORKER_METRICS_PORT"),
                             shared=False)
        try:
            server.start_thread()
        except OSError as exc:
            raise ConfigError(f"TELEMETRY_WORKER_METRICS_PORT={port}: cannot listen on {host}: "
                              f"{exc.__cause__ or exc}") from exc
        out.server = server
        metrics.refresh_depth()
    return out


class DrainProgress:
    """A progress line of what a draining worker stores (the demo's last drain)."""

    def __init__(self, label: str = "drain") -> None:
        self.bar = Progress(label, None, unit="readings")
        self.readings = 0
        self.files = 0

    def polled(self, result: PollResult) -> None:
        pass

    def stored(self, files: Sequence[FileWritten]) -> None:
        if not files:
            return
        self.readings += sum(f.readings for f in files)
        self.files += len(files)
        self.bar.update(self.readings, note=f"files={self.files}")

    def faulted(self, new_episode: bool) -> None:
        pass

    def idle(self) -> None:
        pass

    def stopped(self) -> None:
        self.bar.update(self.readings, note=f"files={self.files}", force=True)
        self.bar.close()
