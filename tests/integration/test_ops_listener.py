"""The operations listener over a real socket: as a worker runs it (in a thread of a synchronous
process, on a port of its own, gone when stopped) and as `serve` runs it (started and stopped
with the public app); its port settings: a number, 0 for any free port, or off.
(The worker's own app over a socket: tests/unit/test_worker_observers.py.)"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import httpx
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.ops import OpsListener
from telemetry.entrypoints.settings import ConfigError, Settings, load_settings
from tests.integration.http_support import make_container


@get("/metrics", media_type="text/plain")
async def _metrics() -> str:
    return "up 1\n"


def test_an_ops_listener_in_a_thread_serves_its_app_until_stopped() -> None:
    listener = OpsListener(Litestar([_metrics]), "127.0.0.1", 0)
    listener.start_thread()
    try:
        url = f"http://127.0.0.1:{listener.port}"
        for _ in range(50):
            try:
                r = httpx.get(url + "/metrics", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert r.text == "up 1\n"
    finally:
        listener.stop_thread()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/metrics", timeout=1)


def test_the_new_settings_parse_and_name_themselves_when_bad() -> None:
    s = load_settings({})
    assert (s.ops_host, s.ops_port, s.header_timeout) == ("127.0.0.1", 8001, 10.0)
    assert (s.max_lateness, s.max_request_hours) == (35 * 86400.0, 24)
    s = load_settings({"TELEMETRY_OPS_PORT": "0", "TELEMETRY_MAX_LATENESS": "86400",
                       "TELEMETRY_MAX_REQUEST_HOURS": "2"})
    assert (s.ops_port, s.max_lateness, s.max_request_hours) == (0, 86400.0, 2)
    assert (s.worker_metrics_port, load_settings({"TELEMETRY_WORKER_METRICS_PORT": "0"})
            .worker_metrics_port) == (None, 0)  # off by default; 0 is any free port
    for name in ("TELEMETRY_OPS_PORT", "TELEMETRY_WORKER_METRICS_PORT"):
        assert getattr(load_settings({name: " OFF "}), name[10:].lower()) is None
    for name, value in [("TELEMETRY_OPS_PORT", "70000"), ("TELEMETRY_MAX_LATENESS", "0"),
                        ("TELEMETRY_OPS_PORT", "none"), ("TELEMETRY_WORKER_METRICS_PORT", ""),
                        ("TELEMETRY_MAX_REQUEST_HOURS", "x"), ("TELEMETRY_HEADER_TIMEOUT", "-1")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})


def test_a_port_taken_by_another_user_stops_the_start_naming_the_settings() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share it
    taken.listen(1)
    try:
        listener = OpsListener(Litestar([_metrics]), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError, match="TELEMETRY_OPS_PORT"):
            listener.start_thread()
    finally:
        taken.close()


def _ops_urls(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.fields["url"] for r in caplog.records if r.getMessage() == "ops_listening"]


@pytest.mark.parametrize("port", [0, None])
def test_serve_starts_its_listener_with_the_public_app_unless_it_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, port: int | None
) -> None:
    settings = Settings(data_dir=tmp_path, queue="memory", storage="memory", ops_port=port)
    apps = create_apps(make_container(settings), serve_ops=True)
    with caplog.at_level(logging.INFO, logger="telemetry"), TestClient(apps.public) as public:
        assert public.get("/healthz").status_code == 200
        urls = _ops_urls(caplog)
        if port is None:
            assert urls == []
            return
        [url] = urls  # port 0: the log line is the way to find it
        r = httpx.get(url + "/metrics", timeout=5)
        assert r.status_code == 200 and "telemetry_ingest_requests_total" in r.text
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):  # stopped with the public app
        httpx.get(url + "/metrics", timeout=1)
