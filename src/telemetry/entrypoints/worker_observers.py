"""What watches a worker, from the settings: the state it publishes to the lake, and its
Prometheus metrics with their listener when TELEMETRY_WORKER_METRICS_PORT is set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from telemetry.domain.drain import DrainBatches, FileWritten, PollResult
from telemetry.domain.ports.depth import QueueDepthProbe
from telemetry.entrypoints.ops_server import OpsServer
from telemetry.entrypoints.progress import Progress
from telemetry.entrypoints.settings import ConfigError, Settings
from telemetry.entrypoints.worker import WorkerObserver
from telemetry.entrypoints.worker_metrics import WorkerMetrics
from telemetry.entrypoints.worker_publish import StatePublisher


@dataclass
class Observers:
    metrics: WorkerMetrics
    publisher: StatePublisher
    server: OpsServer | None = None
    all: list[WorkerObserver] = field(default_factory=list)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def observers(settings: Settings, drain: DrainBatches, *, listen: bool = True) -> Observers:
    queue = drain.queue
    depth = queue.depth if isinstance(queue, QueueDepthProbe) else None
    metrics = WorkerMetrics(depth)
    publisher = StatePublisher(drain.storage, window_s=settings.trigger_window,
                               every=settings.worker_state_every, clock=drain.clock)
    out = Observers(metrics, publisher, all=[metrics, publisher])
    if listen and settings.worker_metrics_port:
        try:
            out.server = OpsServer(metrics.registry, settings.worker_metrics_host,
                                   settings.worker_metrics_port).start()
        except OSError as exc:
            raise ConfigError(
                f"TELEMETRY_WORKER_METRICS_PORT={settings.worker_metrics_port}: cannot listen "
                f"on {settings.worker_metrics_host}: {exc}") from exc
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
