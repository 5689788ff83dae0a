"""The operations listener: a second HTTP server in the process, on its own port, for what
operators and their tools ask (metrics, readiness, the API document) and vehicles never need.

One listener for every process that has one. `serve` gives it the ingest's operations app
(TELEMETRY_OPS_HOST, TELEMETRY_OPS_PORT: 127.0.0.1:8001), started and stopped with the public
app; `worker` gives it `registry_app`, its Prometheus registry and /healthz, in a thread
(TELEMETRY_WORKER_METRICS_HOST, TELEMETRY_WORKER_METRICS_PORT: off unless set). Either port
setting takes `off` (no listener) or 0 (any free port; the `ops_listening` log line says which).
Loopback by default: a scraper or a probe on the host reaches it, the internet does not.

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
from prometheus_client import CollectorRegistry, generate_latest

from telemetry.entrypoints import slow_clients
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.metrics import CONTENT_TYPE

log = logging.getLogger("telemetry")


class _Server(uvicorn.Server):
    """A server that leaves signals to the process's main server (or to its own code)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, shared: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


OPS_SETTINGS = ("TELEMETRY_OPS_HOST", "TELEMETRY_OPS_PORT")


class OpsListener:
    """Serves `app` on (host, port): `start`/`stop` inside a running event loop (as lifespan
    hooks), or `start_thread`/`stop_thread` from synchronous code. `settings`: the names of the
    host and port settings, for the message when the port cannot be had. `shared`: the
    processes of one `serve` share the port; anything else already on it stops the start (two
    workers on one port would each answer a random half of the scrapes)."""

    def __init__(self, app: Any, host: str, port: int,
                 settings: tuple[str, str] = OPS_SETTINGS, *, shared: bool = True) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.settings = settings
        self.shared = shared
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def _make(self) -> tuple[_Server, socket.socket]:
        try:
            sock = _bind(self.host, self.port, self.shared)
        except OSError as exc:  # the process stops at start, saying which setting to change
            raise OSError(f"operations listener on {self.host}:{self.port} "
                          f"({', '.join(self.settings)}): {exc}") from exc
        self.port = sock.getsockname()[1]  # port 0: the one the system chose
        # With port 0 this line is the only way to find /metrics, /readyz and /schema.
        event(log, "ops_listening", url=self.url)
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_config=None,
                                http=slow_clients.HeaderDeadlineProtocol)
        return _Server(config), sock

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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


def registry_app(registry: CollectorRegistry) -> Any:
    """The operations app of a process without an HTTP app of its own (the worker): `GET
    /metrics`, the registry in Prometheus text, and `GET /healthz`. Plain ASGI: two routes do
    not need a framework's start-up."""
    ok = b'{"status":"ok"}'
    missing = b'{"status_code":404,"detail":"Not Found"}'
    wrong_method = b'{"status_code":405,"detail":"Method Not Allowed"}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        content_type = "application/json"
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, wrong_method
        elif scope["path"] == "/metrics":
            status, body, content_type = 200, generate_latest(registry), CONTENT_TYPE
        elif scope["path"] == "/healthz":
            status, body = 200, ok
        else:
            status, body = 404, missing
        headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode())]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    return app
