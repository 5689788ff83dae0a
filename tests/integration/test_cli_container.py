"""`cli.main(argv, container=...)`: a command runs on the container it is handed, providers
overridden and all; and the long-lived objects of `serve` and `worker` are the container's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dependency_injector import providers
from litestar.testing import TestClient

from telemetry.adapters.memory import MemoryApiKeyStore
from telemetry.domain.readings import Reading, ReadingRules
from telemetry.entrypoints import cli
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.metrics import IngestMetrics
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import KEY, URL, good, make_container
from tests.support.ingest import SyncIngest


def _memory(tmp_path: Path) -> Container:
    return create_container(Settings(data_dir=tmp_path, queue="memory", storage="memory"))


def test_keys_are_created_in_the_store_of_the_container_handed_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = _memory(tmp_path)
    store = MemoryApiKeyStore()
    container.api_keys.override(providers.Object(store))
    assert cli.main(["keys", "create", "--name", "gw", "--vehicles", "car-*"],
                    container=container) == 0
    [stored] = store.all()
    assert (stored.name, stored.vehicles) == ("gw", ("car-*",))
    assert not (tmp_path / "keys.json").exists()  # the file store was not built
    capsys.readouterr()
    assert cli.main(["keys", "list"], container=container) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "gw"


def test_worker_and_aggregate_run_on_the_memory_adapters_handed_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = _memory(tmp_path)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    readings = [Reading(f"car-{i % 3}", hour + timedelta(seconds=i), {"Vehicle.Speed": 1.0})
                for i in range(30)]
    SyncIngest(container.queue(), container.clock(), ReadingRules()).execute(readings, None)

    assert cli.main(["worker", "--once"], container=container) == 0
    assert capsys.readouterr().out.startswith("drained: 1 file(s), 30 reading(s)")
    storage = container.storage()
    assert len(storage.list("raw/")) == 1  # in the memory lake: the same container's
    assert container.worker().stats.readings == 30  # the worker the container built

    assert cli.main(["aggregate", "--jobs", "1"], container=container) == 0
    assert "aggregated 1 hour(s)" in capsys.readouterr().out
    [agg] = [k for k in storage.list("aggregates/") if k.endswith("vehicles.jsonl")]
    rows = [json.loads(line) for line in storage.get(agg).decode().splitlines()]
    assert sum(r["readings"] for r in rows) == 30


def test_the_worker_its_observers_and_its_stop_are_one_set(tmp_path: Path) -> None:
    container = _memory(tmp_path)
    worker = container.worker()
    assert worker is container.worker()
    assert worker.stop is container.worker_stop()
    assert worker.observers == container.worker_observers().all
    assert container.worker_observers().server is None  # off by default


def test_serve_counts_in_the_metrics_and_sends_through_the_sender_of_its_container(
    tmp_path: Path,
) -> None:
    container = make_container(Settings(data_dir=tmp_path, queue="memory", storage="memory"))
    metrics = IngestMetrics()
    container.ingest_metrics.override(providers.Object(metrics))
    apps = create_apps(container)
    with TestClient(apps.public) as client:
        r = client.post(URL, json={"readings": [good()]}, headers={"X-API-Key": KEY})
        assert r.status_code == 202, r.text
    assert b'telemetry_ingest_requests_total{reason="accepted",status="202"} 1.0' in \
        metrics.render()
    assert container.sender() is container.sender()  # one per process: threads are costly
    assert container.queue().depth().visible == 1
