"""Processes started as a user would: `python -m telemetry ...` with TELEMETRY_* settings (or,
for the crash tests, through `python -m tests.support.launch`, which arms a crash point)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from telemetry.entrypoints.loopback import free_port
from tests.support import crash

if TYPE_CHECKING:
    from tests.e2e.faulty_endpoint import FaultyEndpoint


def _argv(args: tuple[str, ...], crash_at: str | None) -> list[str]:
    start = [sys.executable, "-m", "telemetry"] if crash_at is None else crash.command(crash_at)
    return [*start, *args]


@dataclass
class Pipeline:
    data_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""
    ops_url: str = ""  # the operations listener: /metrics, /readyz, /schema

    def cli(self, *args: str, timeout: float = 60, crash_at: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """`telemetry args`; `crash_at`: through the launcher, killed at that crash point
        (tests/support/crash.py)."""
        return subprocess.run(
            _argv(args, crash_at), cwd=crash.REPO,
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def create_key(self, vehicles: str = "*", name: str = "test") -> str:
        out = self.cli("keys", "create", "--name", name, "--vehicles", vehicles)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def start(self, *args: str, log_name: str, crash_at: str | None = None
              ) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / f"{log_name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(
            _argv(args, crash_at), cwd=crash.REPO,
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def use_ports(self) -> int:
        """A free port for the API, another for the operations listener; the API's."""
        port, ops = free_port(), free_port()
        self.url, self.ops_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}"
        self.env["TELEMETRY_OPS_PORT"] = str(ops)
        return port

    def serve(self, *args: str, crash_at: str | None = None, timeout: float = 30
              ) -> subprocess.Popen[bytes]:
        port = self.use_ports()
        p = self.start("serve", "--port", str(port), *args, log_name="serve", crash_at=crash_at)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert p.poll() is None, self.log("serve")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return p
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("serve did not become healthy:\n" + self.log("serve"))

    def post_one(self, key: str, reading_id: str) -> httpx.Response:
        """One reading of car-1, now, on a connection of its own: the kernel spreads new
        connections over the processes of `serve --workers N`."""
        reading = {"vehicle_id": "car-1", "ts": datetime.now(UTC).isoformat(),
                   "reading_id": reading_id, "signals": {"Vehicle.Speed": 1.0}}
        with httpx.Client() as c:
            return c.post(self.url + "/v1/readings", json={"readings": [reading]},
                          headers={"X-API-Key": key}, timeout=30)

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 30) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout=timeout)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.update(
        TELEMETRY_DATA_DIR=str(tmp_path / "data"),
        TELEMETRY_BATCH_MAX_AGE="0.5",
        TELEMETRY_LOG_FORMAT="json",
        TELEMETRY_OPS_PORT="0",  # a test's server shares no port; `use_ports` names one
    )
    p = Pipeline(tmp_path, env)
    yield p
    for proc in p.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def endpoint() -> Iterator[FaultyEndpoint]:
    """A fault-injecting proxy in front of the shared moto server (tests/e2e/faulty_endpoint.py),
    closed after the test."""
    from tests.e2e.faulty_endpoint import FaultyEndpoint
    from tests.support import moto as moto_server

    e = FaultyEndpoint(moto_server.shared_server_url())
    e.up()
    try:
        yield e
    finally:
        e.down()
