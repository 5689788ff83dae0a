"""The operations listener over a real socket, as a worker would run it: in a thread of a
synchronous process, on a port of its own, and gone when stopped."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from litestar import Litestar, get

from telemetry.entrypoints.ops import OpsListener
from telemetry.entrypoints.settings import ConfigError, load_settings


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
    for name, value in [("TELEMETRY_OPS_PORT", "70000"), ("TELEMETRY_MAX_LATENESS", "0"),
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
