"""The CPU budget of one ingest request, from the socket to the answer, part by part.

    python -m bench.ingest_budget --load wrk        # 100- and 1,000-reading JSON bodies

Every figure is CPU time of one process (all its threads), per request:

- **server**: `telemetry serve` (one process, SQLite queue) under the load of bench_ingest, its
  CPU time (/proc) over the requests it answered. This is the total the parts add up to.
- **socket and HTTP**: the same for a bare ASGI app on the same uvicorn (uvloop, httptools)
  that reads the body and answers 202 with a body of our answer's size: the event loop,
  loopback TCP, HTTP parsing and writing.
- **the app, in process**: the public Litestar app called as uvicorn calls it, one request
  after the other, without a socket (`time.process_time`, all threads).
- **each part of the handler**, alone, in a tight loop on the same bodies: authentication, rate
  limit, headers, body read, decode, `prepare` (rules, reading ids, records and lake lines,
  partials, envelopes), the hand-off to the sender threads and back, the queue's send (one
  commit per request), metrics, the answer's encoding. Logging is not a part: the success path
  logs nothing.
- **Litestar**: the same app with the route's handler answering a ready 202 at once (routing,
  `Request` and `Response`, the exception-handler wrapping, the ASGI messages).
- **the parts together rather than alone**: the app with a send that returns at once, less
  Litestar and the handler's parts: the same work interleaved in one request rather than
  repeated in a tight loop (caches, the collector).
- **thread switches around a real send**: the app less the same app without the send, less the
  hand-off (measured with an idle send) and the send alone: what the sender thread's holding
  the GIL for a real send costs the event loop's thread.
- **in a server, not alone**: the server less the socket and HTTP less the app in process: the
  interleaving of many connections' requests (caches), the sender threads' GIL switches, and
  the group commit (which saves CPU against a commit per request, so this can be negative).

Taken at two sizes (`--sizes`, default 100 and 1,000 readings per request), each part splits
into a fixed cost per request and a cost per reading (a straight line through the two).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from dependency_injector import providers

from bench.bench_ingest import RssSampler, one_server
from bench.common import (
    base_parser,
    emit,
    median,
    request_bodies,
    scratch_dir,
    start_bare_app,
)
from bench.common import (
    cpu_per_call as _cpu,
)
from bench.load import HOST, request_bytes, run_load, stop, wait_http
from telemetry.adapters.memory import MemoryApiKeyStore
from telemetry.domain import readings as readings_module
from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.packing import pack_joined
from telemetry.domain.partials import partial_line
from telemetry.domain.readings import derive_reading_ids, epoch_ms, ids_and_lines
from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.http import bodies as wire
from telemetry.entrypoints.http import ingest
from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.http.openapi import AcceptedBody
from telemetry.entrypoints.http.sender import Sender
from telemetry.entrypoints.http.server import tune_gc
from telemetry.entrypoints.loopback import free_port
from telemetry.entrypoints.settings import Settings

KERNEL = "prepare: ids, hours and lines (the kernel)"
KEY_ID, SECRET = "0123456789abcdef", "s" * 43
KEY = format_key(KEY_ID, SECRET)


def _cpu_async(loop: asyncio.AbstractEventLoop, make: Callable[[], Any], calls: int) -> float:
    async def many() -> None:
        for _ in range(calls):
            await make()

    rounds = []
    for _ in range(3):
        t = time.process_time()
        loop.run_until_complete(many())
        rounds.append((time.process_time() - t) / calls)
    return median(rounds)


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/v1/readings",
        "raw_path": b"/v1/readings", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"), (b"x-api-key", KEY.encode())],
        "client": (HOST, 40000), "server": (HOST, 8000), "state": {},
    }


def in_process(root: Path, bodies: list[bytes], calls: int) -> dict[str, float]:
    """CPU per request of the app called in process, and of each part of its handler, in us."""
    data = root / "inproc"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, mode=0o700)  # as an operator should: serve warns otherwise
    settings = Settings(data_dir=data, rate_limit=1e9, rate_burst=10**9)
    container = create_container(settings)
    container.api_keys.override(providers.Object(MemoryApiKeyStore()))
    container.api_keys().add(new_stored_key(KEY_ID, SECRET, "bench", ["*"], datetime.now(UTC)))
    apps = create_apps(container)
    app = apps.public
    tune_gc()  # as the server does
    endpoint: ingest.IngestEndpoint = app.state.ingest
    queue = container.queue()
    loop = asyncio.new_event_loop()
    n = len(bodies)
    it = iter(range(10**9))

    def body() -> bytes:
        return bodies[next(it) % n]

    async def call_app() -> None:
        b = body()
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(_scope(b), receive, send)  # type: ignore[arg-type]
        if sent[0]["status"] != 202:
            raise SystemExit(f"in-process app answered {sent[0]['status']}: {sent[1:]}")

    out: dict[str, float] = {}
    loop.run_until_complete(call_app())  # start-up work (threads, caches) out of the figures
    out["app"] = _cpu_async(loop, call_app, calls)
    # The same app with a send that returns at once: what is left is the app on its thread.
    sender, endpoint.sender = endpoint.sender, _NoSend()  # type: ignore[assignment]
    out["app without the send"] = _cpu_async(loop, call_app, calls)
    endpoint.sender = sender
    # Litestar alone: the same route answering a ready 202 without reading the body.
    ready = b'{"accepted":0}'

    async def stub(request: Any, seen: Any) -> Any:
        return ingest.Response(ready, status_code=202, media_type="application/json")

    handle, endpoint.handle = endpoint.handle, stub  # type: ignore[method-assign]
    out["Litestar, a route answering at once"] = _cpu_async(loop, call_app, calls)
    endpoint.handle = handle  # type: ignore[method-assign]

    principal = endpoint.authenticator.authenticate(KEY)
    clock = endpoint.clock
    out["auth"] = _cpu(lambda: endpoint.authenticator.authenticate(KEY), calls)
    out["rate_limit"] = _cpu(lambda: endpoint.limiter.take(principal.key_id, clock.monotonic()),
                             calls)

    def headers() -> None:
        wire.media_type("application/json")
        wire.is_gzip(None)
        declared = str(len(bodies[0]))
        _ = declared.isdigit() and int(declared) > endpoint.max_wire

    out["headers"] = _cpu(headers, calls)

    async def read() -> None:
        b = body()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b, "more_body": False}

        await wire.read_body(receive, gzip=False, max_wire=endpoint.max_wire,
                             max_inflated=endpoint.max_inflated)

    out["body_read"] = _cpu_async(loop, read, calls)
    mb = endpoint.max_batch
    out["decode"] = _cpu(lambda: wire.decode_checked(wire.JSON, body(), mb), calls)
    decoded = [wire.decode_checked(wire.JSON, b, mb) for b in bodies]
    accept = endpoint.accept
    out["prepare"] = _cpu(lambda: accept.execute(decoded[next(it) % n], principal), calls)
    now = clock.now()
    out["prepare: rules"] = _cpu(lambda: accept.rules.check(decoded[next(it) % n], now), calls)
    if readings_module.kernel is None:
        out["prepare: reading ids"] = _cpu(lambda: derive_reading_ids(decoded[next(it) % n]),
                                           calls)
    else:  # ids, event times, hours and lines in one pass, msgspec's encode included
        out[KERNEL] = _cpu(lambda: ids_and_lines(decoded[next(it) % n], now), calls)
    accepted = [accept.execute(r, principal) for r in decoded]
    # partials and envelopes from the records `prepare` made, rebuilt here as it does
    records = [[msgspec.json.decode(line, type=_Rec) for line in
                _payload_lines(m)] for m in (a.messages[0] for a in accepted)]
    out["prepare: partials"] = _cpu(lambda: partial_line(records[next(it) % n], True), calls)
    joined = [{1: (b"".join(_payload_lines(a.messages[0], keep=True)), [0] * len(r), None)}
              for a, r in zip(accepted, records, strict=True)]
    max_bytes = queue.max_message_bytes
    out["prepare: envelopes"] = _cpu(
        lambda: pack_joined(joined[next(it) % n], epoch_ms(now), max_bytes), calls)
    measured = [k for k in out if k.startswith("prepare: ")]
    out["prepare: records and lines, the rest" if KERNEL not in out else "prepare: the rest"] = (
        out["prepare"] - sum(out[k] for k in measured))

    idle = Sender(lambda messages: None, 64)
    out["hand-off to a sender thread and back"] = _cpu_async(
        loop, lambda: idle.send([b""], 10.0), calls)
    idle.stop()
    out["queue send (one commit per request)"] = _cpu(
        lambda: queue.send(accepted[next(it) % n].messages), max(20, calls // 5))
    metrics = endpoint.metrics

    def count() -> None:
        metrics.enqueue.observe(0.002, ("ok",))
        metrics.request(202, "accepted")
        metrics.accepted.inc(amount=100)

    out["metrics"] = _cpu(count, calls)
    ids = [a.reading_ids for a in accepted]

    def answer() -> None:
        i = ids[next(it) % n]
        ingest.Response(ingest._encode(AcceptedBody(len(i), i)), status_code=202,
                        media_type="application/json")

    out["answer body"] = _cpu(answer, calls)
    loop.run_until_complete(_stop_sender(endpoint.sender))
    loop.close()
    queue.close()
    return {k: v * 1e6 for k, v in out.items()}


class _NoSend:
    async def send(self, messages: list[bytes], timeout: float) -> None:
        return None


class _Rec(msgspec.Struct):
    reading_id: str
    vehicle_id: str
    ts: datetime
    received_at: datetime
    signals: dict[str, Any]


def _payload_lines(message: bytes, keep: bool = False) -> list[bytes]:
    lines = message.split(b"\n")[1:-1]
    if lines and lines[0].startswith(b'{"derived"'):
        lines = lines[1:]
    return [x + b"\n" for x in lines] if keep else lines


async def _stop_sender(sender: Sender) -> None:
    sender.stop()


def server_cpu(root: Path, bodies: list[bytes], seconds: float, load: str, procs: int,
               conns: int, per_request: int) -> tuple[float, float, float]:
    """(ours, bare) CPU us per request under load, and our readings/s."""
    ours = one_server("ours", root, None, bodies, seconds, procs, conns, 1, load)
    if ours["errors"]:
        print(f"ours: {ours['errors']} answers not 202 (not counted): {ours['statuses']}")
    ours_rps = ours["readings_per_s"] / per_request
    port = free_port()
    server = start_bare_app(root, HOST, port, per_request)
    try:
        wait_http(port, "/")
        reqs = [request_bytes(port, "/v1/readings", b, {"X-API-Key": "k"}) for b in bodies]
        sampler = RssSampler(server.pid)
        sampler.start()
        res = run_load(load, port, reqs, seconds=seconds, procs=procs, conns=conns,
                       scratch=root / "wrk")
        cores = sampler.finish()["cpu_cores"]
    finally:
        stop(server)
    bare_rps = res.accepted / res.seconds
    return (ours["cpu_cores"] / ours_rps * 1e6, cores / bare_rps * 1e6,
            ours["readings_per_s"])


def budget(root: Path, per_request: int, args: Any) -> dict[str, float]:
    bodies = request_bodies(200 * per_request, per_request, vehicles=1000,
                            start=datetime.now(UTC) - timedelta(minutes=1))
    calls = max(20, 30_000 // per_request)
    parts = [in_process(root, bodies, calls) for _ in range(args.runs)]
    # As many readings in flight as with 100-reading requests, so answers stay within wrk's
    # 2 s timeout at 1,000 readings a request.
    conns = max(2, args.conns * 100 // max(100, per_request))
    servers = [server_cpu(root, bodies, args.seconds, args.load, args.load_procs, conns,
                          per_request) for _ in range(args.runs)] if not args.no_server else []
    out = {k: median([p[k] for p in parts]) for k in parts[0]}
    handler = [k for k in out if not k.startswith(("app", "prepare: ", "hand-off", "queue",
                                                    "Litestar"))]
    # The app without the send, less Litestar's own share and the parts each measured alone:
    # the same work interleaved in one request rather than repeated in a tight loop (caches,
    # the collector).
    out["the parts together rather than alone"] = (
        out["app without the send"] - out["Litestar, a route answering at once"]
        - sum(out[k] for k in handler))
    # The send through the sender threads inside the app, less the hand-off and the send
    # measured alone: the thread switches of a send that does real work (the GIL).
    out["thread switches around a real send"] = (
        out["app"] - out["app without the send"] - out["hand-off to a sender thread and back"]
        - out["queue send (one commit per request)"])
    if servers:
        out["server"] = median([s[0] for s in servers])
        out["socket and HTTP (bare uvicorn app)"] = median([s[1] for s in servers])
        out["in a server, not alone"] = (out["server"] - out["app"]
                                         - out["socket and HTTP (bare uvicorn app)"])
        out["server readings/s"] = median([s[2] for s in servers])
    return out


ORDER = ["socket and HTTP (bare uvicorn app)", "Litestar, a route answering at once",
         "auth", "rate_limit", "headers", "body_read", "decode", "prepare", "prepare: rules",
         "prepare: reading ids", "prepare: records and lines, the rest", KERNEL,
         "prepare: the rest", "prepare: partials",
         "prepare: envelopes", "hand-off to a sender thread and back",
         "queue send (one commit per request)", "thread switches around a real send",
         "metrics", "answer body", "the parts together rather than alone",
         "in a server, not alone", "app", "server"]


def table(sizes: list[int], results: list[dict[str, float]]) -> str:
    a, b = sizes[0], sizes[-1]
    lines = [f"| part | at {a} | at {b} | fixed per request | per reading |",
             "|---|---|---|---|---|"]
    for k in ORDER:
        if k not in results[0]:
            continue
        x, y = results[0][k], results[-1][k]
        per = (y - x) / (b - a) if b != a else 0.0
        fixed = x - per * a
        name = f"  {k}" if k.startswith("prepare: ") else k
        if k in ("app", "server"):
            name = f"**{k}**"
        lines.append(f"| {name} | {x:,.1f} | {y:,.1f} | {fixed:,.1f} | {per:,.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sizes", default="100,1000", help="readings per request, comma-separated")
    ap.add_argument("--load", choices=("python", "wrk"), default="wrk")
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32,
                    help="connections per load thread at 100 readings a request; fewer at "
                    "more readings, for as many readings in flight")
    ap.add_argument("--no-server", action="store_true",
                    help="the in-process parts only (no server, no load generator)")
    ap.add_argument("--dir", help="scratch directory (default: a fresh temp dir)")
    ap.add_argument("--python", action="store_true",
                    help="in process, the pure-Python path even where the kernel is built")
    args = ap.parse_args(argv)
    if args.python:
        readings_module.kernel = None
    if args.tiny:
        args.seconds, args.runs, args.load_procs, args.conns = 1.0, 1, 1, 2
        args.sizes = "10,20"
    sizes = [int(s) for s in args.sizes.split(",")]
    root = scratch_dir(args.dir, "bench-budget-")
    try:
        results = [budget(root, n, args) for n in sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"sizes": sizes, "runs": args.runs,
                              "load": f"{args.load}: {args.load_procs} x {args.conns} conns",
                              "kernel": readings_module.kernel is not None,
                              "us_per_request": [{k: round(v, 1) for k, v in r.items()}
                                                 for r in results]}
    emit("ingest_budget", result, args.json)
    if not args.json:
        print(table(sizes, results))
    return result


if __name__ == "__main__":
    main()
