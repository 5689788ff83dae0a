"""A light HTTP/1.1 load generator: processes of asyncio keep-alive connections on raw
sockets, sending pre-built requests, so the client costs little next to the server it drives.
Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.entrypoints.loopback import HOST

BIN = Path(sys.executable).parent


@dataclass
class LoadResult:
    requests: int = 0
    accepted: int = 0  # 202 responses
    errors: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] | None = None


def request_bytes(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _connection(port: int, requests: list[bytes], offset: int, stop_at: float,
                      interval: float, stats: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = offset
    next_at = time.monotonic()
    try:
        while time.monotonic() < stop_at:
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            stats[status] = stats.get(status, 0) + 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _client(port: int, requests: list[bytes], conns: int, seconds: float, rate: float,
            seed: int, out: Any) -> None:
    stats: dict[int, int] = {}
    interval = conns / rate if rate else 0.0
    started = time.monotonic()

    async def run() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(
            _connection(port, requests, seed * 7919 + c * 104729, stop_at, interval, stats)
            for c in range(conns)))

    try:
        asyncio.run(run())
    except Exception as exc:  # a dead server shows up as errors, not a hung benchmark
        stats[-1] = stats.get(-1, 0) + 1
        print(f"load client: {exc!r}", file=sys.stderr)
    out.put((stats, time.monotonic() - started))


def drive(port: int, requests: list[bytes], *, seconds: float, procs: int = 2, conns: int = 8,
          rate: float = 0.0) -> LoadResult:
    """Send `requests` round-robin for `seconds`; `rate` > 0 paces the total requests/s."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per_proc_rate = rate / procs if rate else 0.0
    ps = [ctx.Process(target=_client, args=(port, requests, conns, seconds, per_proc_rate, i,
                                            out)) for i in range(procs)]
    for p in ps:
        p.start()
    merged: dict[int, int] = {}
    elapsed = 0.0  # measured by the clients, so process start-up is not counted
    for _ in ps:
        stats, took = out.get()
        elapsed = max(elapsed, took)
        for k, v in stats.items():
            merged[k] = merged.get(k, 0) + v
    for p in ps:
        p.join()
    total = sum(merged.values())
    return LoadResult(total, merged.get(202, 0), total - merged.get(202, 0), elapsed, merged)


_WRK_SCRIPT = r"""
-- Cycles through pre-built raw requests (one file each) and counts answers by status.
local threads = {}
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end
function init(args)
  reqs = {}
  local n = tonumber(args[2])
  for i = 1, n do
    local f = io.open(args[1] .. "/" .. i .. ".req", "rb")
    reqs[i] = f:read("*a")
    f:close()
  end
  idx = (tid * 7919) % n
  counts = {}
end
function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, status .. ":" .. n)
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  io.write("WRK " .. summary.duration .. " " .. socket_errors .. " "
           .. table.concat(parts, ",") .. "\n")
end
"""


def drive_wrk(port: int, requests: list[bytes], *, seconds: float, threads: int = 2,
              conns: int = 16, scratch: Path) -> LoadResult:
    """The same round-robin load from `wrk` (C, epoll): a lighter client than `drive`, so the
    server under test gets more of a small machine. The requests are the same bytes."""
    scratch.mkdir(parents=True, exist_ok=True)
    for i, req in enumerate(requests, 1):
        (scratch / f"{i}.req").write_bytes(req)
    script = scratch / "load.lua"
    script.write_text(_WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(seconds))}s",
         "-s", str(script), f"http://{HOST}:{port}/v1/readings", "--", str(scratch),
         str(len(requests))], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    _, duration_us, socket_errors, parts = [*line.split(" "), ""][:4]
    statuses = {int(k): int(v) for k, v in (p.split(":") for p in parts.split(",") if p)}
    if int(socket_errors):
        statuses[-1] = int(socket_errors)
    total = sum(statuses.values())
    return LoadResult(total, statuses.get(202, 0), total - statuses.get(202, 0),
                      int(duration_us) / 1e6, statuses)


def run_load(kind: str, port: int, requests: list[bytes], *, seconds: float, procs: int,
             conns: int, scratch: Path) -> LoadResult:
    """`--load python|wrk` of the benches: `procs` processes (or wrk threads) x `conns`
    connections each."""
    if kind == "wrk":
        return drive_wrk(port, requests, seconds=seconds, threads=procs, conns=procs * conns,
                         scratch=scratch)
    return drive(port, requests, seconds=seconds, procs=procs, conns=conns)


def wait_http(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on {HOST}:{port}{path}")
        time.sleep(0.1)


def telemetry_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    # TELEMETRY_OPS_PORT 0: a benchmark's server must not share an operator's ops port
    env.update(TELEMETRY_DATA_DIR=str(data_dir), TELEMETRY_LOG_LEVEL="warning",
               TELEMETRY_OPS_PORT="0", **extra)
    return env


def create_key(data_dir: Path) -> str:
    out = subprocess.run([str(BIN / "telemetry"), "keys", "create", "--name", "bench",
                          "--vehicles", "*"], env=telemetry_env(data_dir), check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def start_serve(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([str(BIN / "telemetry"), "serve", "--port", str(port), *extra],
                         env=telemetry_env(data_dir))
    wait_http(port)
    return p


def start_peer(data_dir: Path, port: int, key: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "bench.fastapi_peer", "--port", str(port),
                          "--data-dir", str(data_dir), "--api-key", key],
                         cwd=Path(__file__).resolve().parent.parent)
    wait_http(port)
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
