"""Ingest: readings/s through `telemetry serve` (embedded default: SQLite queue), side by side
with the FastAPI + pydantic peer (`bench/fastapi_peer.py`) on the same kind of queue.

    python -m bench.bench_ingest               # 3 runs x 10 s each, 100-reading JSON bodies

One server process each, started fresh on a fresh data dir per run, driven in turn by the same
load (`bench/load.py`: 2 processes x 8 keep-alive connections, as fast as answered). Both
servers' resident memory is sampled during the run (`--seconds 600` for a sustained run).
The load generator shares the machine's cores with the server, unless `--pin` gives each
server its own CPU (the first; one per process) and the load generator the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import base_parser, emit, median, request_bodies, rss_kib, scratch_dir
from bench.load import create_key, request_bytes, run_load, start_peer, start_serve, stop
from telemetry.entrypoints.loopback import free_port


class RssSampler(threading.Thread):
    """VmRSS of a process every `every` seconds, until stopped."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children (`--workers`) so far."""
        total = 0
        for pid in _process_tree(self.pid):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        self.cpu0, self.t0 = self.cpu_seconds(), time.monotonic()
        t0 = time.monotonic()
        while not self._done.is_set():
            try:
                self.samples.append((time.monotonic() - t0, rss_kib(self.pid)))
            except OSError:
                return
            self._done.wait(self.every)

    def finish(self) -> dict[str, float]:
        cpu = (self.cpu_seconds() - self.cpu0) / (time.monotonic() - self.t0)
        self._done.set()
        self.join()
        kib = [k for _, k in self.samples] or [0]
        n = len(kib)
        # "Flat": the last tenth of the run against the second tenth (after warm-up).
        early = max(kib[n // 10 : max(n // 10 + 1, n // 5)] or kib)
        late = max(kib[-max(1, n // 10) :])
        return {"cpu_cores": cpu, "start_mib": kib[0] / 1024, "peak_mib": max(kib) / 1024,
                "early_mib": early / 1024, "end_mib": late / 1024}


def _process_tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += _process_tree(int(child))
    return out


def one_server(kind: str, root: Path, key: str | None, bodies: list[bytes], seconds: float,
               procs: int, conns: int, workers: int = 1, load: str = "python",
               pin: bool = False) -> dict[str, Any]:
    data = root / f"{kind}-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, mode=0o700)  # as an operator should: serve warns otherwise
    port = free_port()
    if kind == "ours":
        key = create_key(data)
    assert key is not None
    server_cpus, load_cpus = _pinning(workers if kind == "ours" else 1) if pin else (None, None)
    with _affinity(server_cpus):  # inherited by the server's processes and threads
        if kind == "ours":
            server = start_serve(data, port, "--workers", str(workers))
        else:
            server = start_peer(data, port, key)
    try:
        reqs = [request_bytes(port, "/v1/readings", b, {"X-API-Key": key}) for b in bodies]
        sampler = RssSampler(server.pid)
        sampler.start()
        with _affinity(load_cpus):
            res = run_load(load, port, reqs, seconds=seconds, procs=procs, conns=conns,
                           scratch=root / "wrk")
        rss = sampler.finish()
    finally:
        stop(server)
        shutil.rmtree(data, ignore_errors=True)
    per_request = len(_readings_of(bodies[0]))
    return {"readings_per_s": res.accepted * per_request / res.seconds,
            "requests": res.requests, "errors": res.errors, "statuses": res.statuses, **rss}


def _pinning(server_cores: int) -> tuple[set[int], set[int]]:
    """`--pin`: the first `server_cores` usable CPUs for the server, the rest for the load."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= server_cores:
        raise SystemExit(f"--pin needs more than {server_cores} CPUs, this process has "
                         f"{len(cpus)}")
    return set(cpus[:server_cores]), set(cpus[server_cores:])


@contextlib.contextmanager
def _affinity(cpus: set[int] | None) -> Iterator[None]:
    """This process (and what it starts meanwhile) on `cpus`; None: unchanged."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _readings_of(body: bytes) -> list[Any]:
    import msgspec

    return list(msgspec.json.decode(body)["readings"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--conns", type=int, default=8, help="connections per load process")
    ap.add_argument("--only", choices=("ours", "peer"), help="run one server only")
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes of ours (`telemetry serve --workers`); the peer "
                    "keeps one. RSS is the first process's only; CPU counts them all")
    ap.add_argument("--one-vehicle", action="store_true",
                    help="each request holds one vehicle's readings (these carry partial "
                    "aggregates, ADR 0006); default: each request's readings are of as many "
                    "vehicles")
    ap.add_argument("--load", choices=("python", "wrk"), default="python",
                    help="load generator: bench/load.py (default), or wrk (Debian package "
                         "`wrk`), lighter, with --load-procs threads x --conns connections each")
    ap.add_argument("--pin", action="store_true",
                    help="each server on its own CPUs (one per process: the first ones), the "
                    "load generator on the others, so that they never share a core")
    ap.add_argument("--dir", help="scratch directory (default: a fresh temp dir)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seconds, args.runs, args.load_procs, args.conns = 1.0, 1, 1, 2
    root = scratch_dir(args.dir, "bench-ingest-")
    # Distinct readings, stamped a minute ago: valid for any run length (not in the future).
    bodies = request_bodies(200 * args.per_request, args.per_request, vehicles=1000,
                            start=datetime.now(UTC) - timedelta(minutes=1),
                            one_vehicle=args.one_vehicle)
    kinds = [args.only] if args.only else ["ours", "peer"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        key: str | None = None
        for _ in range(args.runs):
            for kind in kinds:
                if kind == "peer" and key is None:
                    key = "bench-peer-key"
                r = one_server(kind, root, key, bodies, args.seconds, args.load_procs,
                               args.conns, args.workers, args.load, args.pin)
                if r["errors"]:
                    print(f"{kind}: {r['errors']} non-202 answers: {r['statuses']}")
                runs[kind].append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"seconds_per_run": args.seconds, "runs": args.runs,
                              "per_request": args.per_request,
                              "one_vehicle_per_request": args.one_vehicle,
                              "load": f"{args.load}: {args.load_procs} x {args.conns} conns",
                              "ours_workers": args.workers, "pinned": args.pin}
    for kind, rs in runs.items():
        rates = [r["readings_per_s"] for r in rs]
        result[f"{kind}_readings_per_s_median"] = median(rates)
        result[f"{kind}_readings_per_s_each"] = [round(x) for x in rates]
        result[f"{kind}_rss_mib_start_early_end_peak"] = [
            round(rs[-1][k], 1) for k in ("start_mib", "early_mib", "end_mib", "peak_mib")]
        result[f"{kind}_non_202"] = sum(r["errors"] for r in rs)
        result[f"{kind}_server_cpu_cores_median"] = round(median([r["cpu_cores"] for r in rs]), 2)
    if len(kinds) == 2 and result["peer_readings_per_s_median"]:
        result["ratio_ours_vs_peer"] = round(
            result["ours_readings_per_s_median"] / result["peer_readings_per_s_median"], 2)
    emit("ingest", result, args.json)
    return result


if __name__ == "__main__":
    main()
