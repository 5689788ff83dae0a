"""`serve` as it is exposed: TLS on the public port, a deadline on request headers, the
operations listener apart from the public port. Over real sockets."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_serve_speaks_tls_with_the_given_certificate(pipeline: Pipeline, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    api_key = pipeline.create_key("car-*")
    port = pipeline.use_ports()
    url = f"https://127.0.0.1:{port}"
    p = pipeline.start("serve", "--port", str(port), "--tls-certfile", str(cert),
                       "--tls-keyfile", str(key), log_name="serve")
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 30
    while True:
        assert p.poll() is None, pipeline.log("serve")
        try:
            r = httpx.get(url + "/healthz", verify=trust, timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, pipeline.log("serve")
            time.sleep(0.1)
    assert r.status_code == 200
    r = httpx.post(url + "/v1/readings", verify=trust, headers={"X-API-Key": api_key},
                   json={"readings": []})
    assert r.status_code == 422  # the API answers over TLS
    with pytest.raises(httpx.TransportError):  # and plain HTTP gets nothing
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_client_that_never_finishes_its_headers_is_cut_off(pipeline: Pipeline) -> None:
    pipeline.env["TELEMETRY_HEADER_TIMEOUT"] = "1"
    pipeline.serve()
    host, port = pipeline.url.removeprefix("http://").split(":")
    for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(first)  # a request answered first: the deadline holds for the next one
            if first:
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            closed = False
            s.sendall(b"POST /v1/readings HTTP/1.1\r\n")
            while time.monotonic() - start < 4:
                try:
                    s.sendall(b"X-Slow: 1\r\n")  # a header line now and then, never the end
                    s.settimeout(0.3)
                    if s.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
            elapsed = time.monotonic() - start
            assert closed, "the connection was still open after 4 s"
            assert elapsed < 2.5, elapsed
    assert httpx.get(pipeline.url + "/healthz").status_code == 200
