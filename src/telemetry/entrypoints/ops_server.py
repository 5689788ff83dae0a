"""A small operations listener: `GET /metrics` (Prometheus text) and `GET /healthz`, on a port
of its own in a daemon thread, for processes that have no HTTP server of their own (the worker).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from telemetry.entrypoints.metrics import CONTENT_TYPE


class OpsServer:
    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
                 ) -> None:
        handler = _handler(registry)
        # Raises OSError when the port is taken: the caller stops with the setting named.
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-listener",
                                        daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE)
            elif path == "/healthz":
                self._answer(200, b'{"status":"ok"}', "application/json")
            else:
                self._answer(404, b'{"status_code":404,"detail":"Not Found"}',
                             "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the worker's own log lines

    return Handler
