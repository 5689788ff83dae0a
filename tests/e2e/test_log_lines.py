"""Log lines as a collector sees them: with TELEMETRY_LOG_FORMAT=json every line of every
process is one JSON object, uvicorn's included; text lines start with date, time and offset."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 \w+ +\S+: ")


def _env(tmp_path: Path, fmt: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.update(TELEMETRY_DATA_DIR=str(tmp_path / "data"), TELEMETRY_LOG_FORMAT=fmt)
    return env


def _serve_lines(tmp_path: Path, fmt: str, workers: int) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "telemetry", "serve", "--port", str(port),
                             "--workers", str(workers)], env=_env(tmp_path, fmt),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        httpx.post(f"http://127.0.0.1:{port}/v1/readings", content=b"{}", timeout=5)  # a 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    return out.splitlines()


def test_json_logs_are_json_on_every_line_of_every_server_process(tmp_path: Path) -> None:
    lines = _serve_lines(tmp_path, "json", workers=2)
    docs = []
    for line in lines:
        doc = json.loads(line)  # raises on the first line that is not JSON
        assert {"time", "level", "logger", "event"} <= set(doc), line
        docs.append(doc)
    loggers = {d["logger"] for d in docs}
    assert any(name.startswith("uvicorn") for name in loggers), loggers
    assert any("Started server process" in d["event"] for d in docs), lines
    once = subprocess.run([sys.executable, "-m", "telemetry", "worker", "--once"],
                          env=_env(tmp_path, "json"), capture_output=True, text=True,
                          timeout=60, check=True)
    assert once.stderr.splitlines()
    for line in once.stderr.splitlines():
        json.loads(line)


def test_text_lines_carry_date_time_and_offset(tmp_path: Path) -> None:
    lines = _serve_lines(tmp_path, "text", workers=1)
    assert lines
    for line in lines:
        assert TEXT_LINE.match(line), line
