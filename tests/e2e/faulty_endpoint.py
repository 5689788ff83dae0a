"""A proxy to the moto server that injects AWS faults, for e2e tests of real processes.

Point a process's `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_SQS`) at
`FaultyEndpoint.url`. Modes: `pass` (every call forwarded), `throttle` (every call answered as
SQS answers a throttled one), `slowdown` (S3 object PUTs answered `503 SlowDown` as S3 does
under load, everything else forwarded), and `down()` (the port is closed: connections are
refused). `calls` notes every call and its answer, for tests that assert what was (not) done.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from telemetry.entrypoints.loopback import free_port

_HOP_BY_HOP = ("connection", "transfer-encoding", "content-length", "server", "date")

SQS_THROTTLED = b'{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Rate exceeded"}'
S3_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTYENDPOINT</RequestId><HostId>faulty-endpoint</HostId></Error>"
)


@dataclass(frozen=True)
class Call:
    at: float  # time.monotonic()
    method: str
    path: str
    action: str  # SQS's X-Amz-Target without its prefix (DeleteMessageBatch...), else ""
    status: int


def is_s3_object_put(method: str, path: str) -> bool:
    """PutObject, path-style (as botocore addresses a loopback endpoint): PUT /bucket/key."""
    bucket, _, key = urlsplit(path).path.lstrip("/").partition("/")
    return method == "PUT" and bool(bucket) and bool(key)


class FaultyEndpoint:
    """A proxy to the moto server on a fixed loopback port (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.throttled = 0
        self.slowed = 0
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def _note(self, method: str, path: str, target: str, status: int) -> None:
        with self._lock:
            self.calls.append(Call(time.monotonic(), method, path,
                                   target.rpartition(".")[2], status))

    def up(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, ctype: str, out: bytes,
                        extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _handle(self) -> None:
                method = self.command
                target = self.headers.get("X-Amz-Target", "")
                # botocore sends a PutObject's body only after `100 Continue` (or a second).
                expect = self.headers.get("Expect", "").lower() == "100-continue"
                if proxy.mode == "slowdown" and is_s3_object_put(method, self.path):
                    if not expect:
                        self._body()
                    # As S3 does: the error instead of `100 Continue`, the body never sent.
                    with proxy._lock:
                        proxy.slowed += 1
                    proxy._note(method, self.path, target, 503)
                    self._answer(503, "application/xml", S3_SLOW_DOWN)
                    return
                if expect:
                    self.handle_expect_100()  # an HTTP/1.0 server does not do it by itself
                body = self._body()
                if proxy.mode == "throttle":
                    with proxy._lock:
                        proxy.throttled += 1
                    proxy._note(method, self.path, target, 400)
                    self._answer(400, "application/x-amz-json-1.0", SQS_THROTTLED,
                                 {"x-amzn-query-error": "RequestThrottled;Sender"})
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length", "expect")}
                conn.request(method, self.path, body, headers)
                resp = conn.getresponse()
                out = resp.read()
                proxy._note(method, self.path, target, resp.status)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                if method == "HEAD":  # no body, and the length is the object's
                    length = resp.getheader("Content-Length")
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                else:
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client gone mid-answer (the worker, while the port went down)

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.mode = "pass"

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
