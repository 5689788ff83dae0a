"""The operations listener: a second HTTP server in the process, on its own port, for what
operators and their tools ask (metrics, readiness, the API document) and vehicles never need.

Loopback by default (TELEMETRY_OPS_HOST, TELEMETRY_OPS_PORT): a scraper or a probe on the host
reaches it, the internet does not. Any ASGI app can be served this way; `serve` gives it the
ingest's operations app, and a worker may give it one of its own.

With several server processes (`serve --workers N`), each binds the port with SO_REUSEPORT, as
they share the public one: a scrape reaches one process, like a request does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from telemetry.entrypoints import slow_clients
from telemetry.entrypoints.logs import event

log = logging.getLogger("telemetry")


class _Server(uvicorn.Server):
    """A server that leaves signals to the process's main server (or to its own code)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class OpsListener:
    """Serves `app` on (host, port): `start`/`stop` inside a running event loop (as lifespan
    hooks), or `start_thread`/`stop_thread` from synchronous code."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def _make(self) -> tuple[_Server, socket.socket]:
        try:
            sock = _bind(self.host, self.port)
        except OSError as exc:  # the process stops at start, saying which setting to change
            raise OSError(f"operations listener on {self.host}:{self.port} "
                          f"(TELEMETRY_OPS_HOST, TELEMETRY_OPS_PORT): {exc}") from exc
        self.port = sock.getsockname()[1]  # port 0: the one the system chose
        # With port 0 this line is the only way to find /metrics, /readyz and /schema.
        event(log, "ops_listening", url=f"http://{self.host}:{self.port}")
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_config=None,
                                http=slow_clients.HeaderDeadlineProtocol)
        return _Server(config), sock

    async def start(self) -> None:
        server, sock = self._make()
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():  # it could not start: say why, in the process's own start
            self._task.result()

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def start_thread(self) -> None:
        server, sock = self._make()
        self._server = server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])),
                                        name="ops-listener", daemon=True)
        self._thread.start()

    def stop_thread(self, timeout: float = 5.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
