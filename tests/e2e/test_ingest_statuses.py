"""Every row of the contract's status table, over real HTTP, against `telemetry serve` processes
on the embedded default (SQLite queue, file key store), each checked against the queue file:
a rejected request leaves nothing in it.

Three servers: one with default settings for most rows, one with a tiny rate limit (429, and
a key store outside the data directory via TELEMETRY_KEYS_FILE), one whose queue another
process holds locked (503, and /readyz 503).
"""

from __future__ import annotations

import gzip
import os
import secrets
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.readings import derive_reading_id
from tests.e2e.conftest import Pipeline
from tests.integration.http_support import gzip_bomb
from tests.prometheus_text import samples

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def reading(vid: str = "car-1", **over: Any) -> dict[str, Any]:
    r = {"vehicle_id": vid, "ts": datetime.now(UTC).isoformat(),
         "signals": {"Vehicle.Speed": 12.5, "Vehicle.IsMoving": True}}
    r.update(over)
    return r


def add_key(keys_file: Path, vehicles: str = "*", name: str = "test") -> str:
    """What `telemetry keys create` does, without a process start per key."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    stored = new_stored_key(key_id, secret, name, vehicles.split(","), datetime.now(UTC))
    FileApiKeyStore(keys_file).add(stored)
    return format_key(key_id, secret)


def enqueued(p: Pipeline) -> int:
    """Messages in the queue file, live and dead-lettered, read as another process would."""
    with closing(sqlite3.connect(p.data_dir / "data" / "queue.sqlite3", timeout=10)) as db:
        live = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return int(live + dead)


def start(tmp: Path, **env: str) -> Pipeline:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    base.update(TELEMETRY_DATA_DIR=str(tmp / "data"), TELEMETRY_LOG_FORMAT="json",
                TELEMETRY_LOG_LEVEL="debug", **env)
    return Pipeline(tmp, base)


def stop_all(p: Pipeline) -> None:
    for proc in p.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def spawn(p: Pipeline) -> None:
    p.start("serve", "--port", str(p.use_ports()), log_name="serve")


def wait_healthy(p: Pipeline) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.procs[-1].poll() is None, p.log("serve")
        try:
            if httpx.get(p.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("serve did not become healthy:\n" + p.log("serve"))


@dataclass
class Servers:
    main: Pipeline  # defaults; its key made by `telemetry keys create`
    main_key: str
    limited: Pipeline  # a tiny rate limit, keys in TELEMETRY_KEYS_FILE outside the data dir
    limited_keys: tuple[str, str]
    locked: Pipeline  # short enqueue and ready timeouts, for a queue another process locks
    locked_key: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Three servers, booting side by side (a boot is seconds of imports)."""
    keys_file = tmp_path_factory.mktemp("secrets") / "keys.json"
    main = start(tmp_path_factory.mktemp("main"))
    limited = start(tmp_path_factory.mktemp("limited"), TELEMETRY_RATE_LIMIT="0.01",
                    TELEMETRY_RATE_BURST="2", TELEMETRY_KEYS_FILE=str(keys_file))
    locked = start(tmp_path_factory.mktemp("locked"), TELEMETRY_ENQUEUE_TIMEOUT="1",
                   TELEMETRY_READY_TIMEOUT="1")
    try:
        limited_keys = (add_key(keys_file), add_key(keys_file, name="other"))
        locked_key = add_key(locked.data_dir / "data" / "keys.json")
        for p in (main, limited, locked):
            spawn(p)
        # the CLI runs while the servers boot; the main one picks the new key up by itself
        main_key = main.create_key("car-*", name="gateway-1")
        for p in (main, limited, locked):
            wait_healthy(p)
        deadline = time.monotonic() + 10
        while post(main, main_key, b"{}").status_code == 401:
            assert time.monotonic() < deadline, "the created key never worked"
            time.sleep(0.1)
        yield Servers(main, main_key, limited, limited_keys, locked, locked_key)
    finally:
        for p in (main, limited, locked):
            stop_all(p)


@pytest.fixture(scope="module")
def main(servers: Servers) -> tuple[Pipeline, str]:
    return servers.main, servers.main_key


def post(p: Pipeline, key: str | None, body: bytes, ctype: str = "application/json",
         **headers: str) -> httpx.Response:
    h = {"Content-Type": ctype, **headers}
    if key is not None:
        h["X-API-Key"] = key
    return httpx.post(p.url + "/v1/readings", content=body, headers=h, timeout=30)


def batch(*readings: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"readings": list(readings)})


# ------------------------------------------------------------------ 202


def test_202_every_body_type_is_enqueued_with_its_ids(main) -> None:
    p, key = main
    before = enqueued(p)
    ts = datetime.now(UTC).isoformat()  # one instant: two `now`s could straddle an hour
    readings = [reading(ts=ts), reading("car-2", reading_id="car-2:1", ts=ts)]
    expected = [derive_reading_id("car-1", datetime.fromisoformat(readings[0]["ts"]),
                                  readings[0]["signals"]), "car-2:1"]
    bodies = [
        (batch(*readings), "application/json"),
        (b"".join(msgspec.json.encode(r) + b"\n" for r in readings), "application/x-ndjson"),
        (msgspec.msgpack.encode({"readings": readings}), "application/msgpack"),
    ]
    for body, ctype in bodies:
        for data, enc in ((body, {}), (gzip.compress(body), {"Content-Encoding": "gzip"})):
            r = post(p, key, data, ctype, **enc)
            assert r.status_code == 202, r.text
            assert r.json() == {"accepted": 2, "reading_ids": expected}
    assert enqueued(p) == before + 6  # one message per request (one event-time hour)


# ------------------------------------------------------------------ 4xx rows


def _rejected(p: Pipeline, status: int, response: httpx.Response, before: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and body["detail"]
    assert enqueued(p) == before
    return dict(body)


def test_400_undecodable_bodies(main) -> None:
    p, key = main
    before = enqueued(p)
    for body, ctype, enc in [
        (b'{"readings": [', "application/json", {}),
        (b'{"rows": []}', "application/json", {}),
        (b"\xc1\xc1", "application/msgpack", {}),
        (b'{"vehicle_id": \n', "application/x-ndjson", {}),
        (b"not gzip", "application/json", {"Content-Encoding": "gzip"}),
        (gzip.compress(batch(reading()))[:-6], "application/json", {"Content-Encoding": "gzip"}),
    ]:
        _rejected(p, 400, post(p, key, body, ctype, **enc), before)


def test_401_missing_or_unknown_key_never_says_which(main) -> None:
    p, key = main
    before = enqueued(p)
    key_id = key.split("_")[1]
    answers = [
        _rejected(p, 401, post(p, k, batch(reading())), before)
        for k in (None, "", "tk_0000000000000000_" + "a" * 43, f"tk_{key_id}_" + "a" * 43,
                  "garbage")
    ]
    assert len({a["detail"] for a in answers}) == 1


def test_403_a_vehicle_the_key_may_not_send_for(main) -> None:
    p, key = main
    before = enqueued(p)
    body = _rejected(p, 403, post(p, key, batch(reading(), reading("truck-9"))), before)
    assert "truck-9" in body["detail"]


def test_413_over_the_wire_limit(main) -> None:
    p, key = main
    before = enqueued(p)
    _rejected(p, 413, post(p, key, b" " * (MiB + 1)), before)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b" " * 65536

    r = httpx.post(p.url + "/v1/readings", content=chunked(), timeout=30,
                   headers={"X-API-Key": key, "Content-Type": "application/json"})
    _rejected(p, 413, r, before)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_413_a_gzip_bomb_is_never_inflated_whole(main) -> None:
    p, key = main
    server = p.procs[-1]
    assert post(p, key, batch(reading())).status_code == 202  # warm: imports, buffers
    before, peak_before = enqueued(p), _peak_rss_kib(server.pid)
    bomb = gzip_bomb()  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < MiB
    start = time.perf_counter()
    r = post(p, key, bomb, **{"Content-Encoding": "gzip"})
    elapsed = time.perf_counter() - start
    body = _rejected(p, 413, r, before)
    assert "decompressed" in body["detail"]
    assert elapsed < 5
    grown = _peak_rss_kib(server.pid) - peak_before
    assert grown < 40 * 1024, f"peak RSS grew by {grown} KiB"


def test_415_unsupported_type_or_encoding(main) -> None:
    p, key = main
    before = enqueued(p)
    _rejected(p, 415, post(p, key, batch(reading()), "text/plain"), before)
    _rejected(p, 415, post(p, key, batch(reading()), **{"Content-Encoding": "br"}), before)
    deflated = zlib.compress(batch(reading()))
    _rejected(p, 415, post(p, key, deflated, **{"Content-Encoding": "deflate"}), before)


def test_422_every_problem_with_index_and_field(main) -> None:
    p, key = main
    before = enqueued(p)
    body = _rejected(p, 422, post(p, key, batch(
        reading(), reading("bad id!"), reading(ts="2026-11-29T01:00:00"),
        reading(signals={"Vehicle.Speed": None}),
        reading(extra=1),
    )), before)
    assert {(x["index"], x["field"]) for x in body["extra"]} == {
        (1, "vehicle_id"), (2, "ts"), (3, "signals.Vehicle.Speed"), (4, "extra")}
    nan = msgspec.msgpack.encode({"readings": [reading(signals={"x": float("nan")})]})
    body = _rejected(p, 422, post(p, key, nan, "application/msgpack"), before)
    assert [(x["index"], x["field"]) for x in body["extra"]] == [(0, "signals.x")]
    for empty_or_too_many in ([], [reading()] * 1001):
        _rejected(p, 422, post(p, key, batch(*empty_or_too_many)), before)


# ------------------------------------------------------------------ the connection itself


def test_a_body_cut_off_mid_stream_does_not_hurt_the_server(main) -> None:
    p, key = main
    before = enqueued(p)
    host, port = p.url.removeprefix("http://").split(":")
    head = (f"POST /v1/readings HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(head + batch(reading())[:40])  # then the client vanishes
        time.sleep(0.1)
    assert p.procs[-1].poll() is None
    r = post(p, key, batch(reading()))
    assert r.status_code == 202, r.text
    assert enqueued(p) == before + 1
    deadline = time.monotonic() + 5
    while '"reason":"truncated"' not in p.log("serve") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"reason":"truncated"' in p.log("serve")


# ------------------------------------------------------------------ operations


def test_readyz_metrics_and_schema_on_the_operations_listener_only(main) -> None:
    p, _ = main
    assert p.ops_url.startswith("http://127.0.0.1:")
    r = httpx.get(p.ops_url + "/readyz")
    assert r.status_code == 200 and r.json()["queue"] == "ok"
    metrics = httpx.get(p.ops_url + "/metrics").text
    assert "telemetry_ingest_requests_total{reason=unauthorized,status=401}" in samples(metrics)
    assert "telemetry_enqueue_seconds_bucket" in metrics
    doc = httpx.get(p.ops_url + "/schema").json()
    responses = doc["paths"]["/v1/readings"]["post"]["responses"]
    assert {"202", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(responses)
    assert httpx.get(p.ops_url + "/schema/openapi.json").status_code == 200
    # the public port answers the API and /healthz, nothing of the above
    for path in ("/readyz", "/metrics", "/schema", "/schema/openapi.json", "/schema/swagger"):
        assert httpx.get(p.url + path).status_code == 404, path
    assert httpx.get(p.url + "/healthz").status_code == 200


# ------------------------------------------------------------------ keys


def test_keys_cli_and_revocation_within_seconds(main) -> None:
    """`keys create` made the fixture's key; here `keys revoke`, in its own process while the
    server runs. (`keys list` and the exit codes: tests/integration/test_http_keys_cli.py.)"""
    p, _ = main
    key = add_key(p.data_dir / "data" / "keys.json", "car-*", name="to-revoke")
    t0 = time.monotonic()  # the server re-reads the key file about once a second
    while post(p, key, batch(reading())).status_code != 202:
        assert time.monotonic() - t0 < 5, "a new key does not work after 5 s"
        time.sleep(0.1)
    secret = key.split("_", 2)[2]
    assert secret not in (p.data_dir / "data" / "keys.json").read_text()
    revoked = p.cli("keys", "revoke", "to-revoke")
    assert revoked.returncode == 0, revoked.stderr
    t0 = time.monotonic()
    while post(p, key, batch(reading())).status_code != 401:
        assert time.monotonic() - t0 < 5, "a revoked key still works after 5 s"
        time.sleep(0.1)


def test_the_key_is_in_no_log_line(main) -> None:
    p, key = main
    log = p.log("serve")
    assert '"event":"request_rejected"' in log
    assert key not in log and key.split("_", 2)[2] not in log


# ------------------------------------------------------------------ 429


def test_429_with_retry_after_and_a_key_store_outside_the_data_dir(servers: Servers) -> None:
    p, (key, other) = servers.limited, servers.limited_keys
    assert [post(p, key, batch(reading())).status_code for _ in range(2)] == [202, 202]
    before = enqueued(p)
    r = post(p, key, batch(reading()))
    _rejected(p, 429, r, before)
    assert int(r.headers["Retry-After"]) >= 1
    assert post(p, other, batch(reading())).status_code == 202  # buckets are per key
    assert not (p.data_dir / "data" / "keys.json").exists()  # TELEMETRY_KEYS_FILE was used


# ------------------------------------------------------------------ 503


def test_503_when_another_process_holds_the_queue_locked(servers: Servers) -> None:
    """A real outage of the embedded queue: another process holds SQLite's write lock (a stuck
    worker, a backup). The send waits for it in a thread; the request does not: 503 after
    TELEMETRY_ENQUEUE_TIMEOUT, with Retry-After. /readyz does not hang either."""
    p, key = servers.locked, servers.locked_key
    before = enqueued(p)
    holder = sqlite3.connect(p.data_dir / "data" / "queue.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        r = post(p, key, batch(reading()))
        assert time.monotonic() - t0 < 3
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        ready = httpx.get(p.ops_url + "/readyz", timeout=10)
        assert ready.status_code == 503
        # The abandoned send gives up at SQLite's busy timeout (5 s) while the lock is
        # still held: release it only after that, so the count below is the whole story.
        time.sleep(max(0.0, t0 + 6.0 - time.monotonic()))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert enqueued(p) == before
    assert post(p, key, batch(reading())).status_code == 202  # the queue is back
    assert httpx.get(p.ops_url + "/readyz").status_code == 200
    log = p.log("serve")
    assert '"reason":"enqueue_timeout"' in log
