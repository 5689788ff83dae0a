"""`telemetry serve`: the ingest HTTP service, on uvicorn."""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
from typing import Any

from telemetry.adapters.private_files import make_private_dirs
from telemetry.entrypoints import logs
from telemetry.entrypoints.cli.common import Invocation
from telemetry.entrypoints.container import check_backends
from telemetry.entrypoints.settings import ConfigError


def add_parser(sub: Any) -> None:
    sp = sub.add_parser("serve", help="run the ingest HTTP service",
                        description="Run the ingest HTTP service.")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0: every interface)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    sp.add_argument("--workers", type=int, default=1, help="server processes")
    sp.add_argument("--tls-certfile", metavar="PEM",
                    help="serve HTTPS with this certificate (chain), with --tls-keyfile")
    sp.add_argument("--tls-keyfile", metavar="PEM", help="the certificate's private key")
    sp.set_defaults(run=run)


def run(args: argparse.Namespace, inv: Invocation) -> int:
    import uvicorn

    from telemetry.entrypoints.http import server
    from telemetry.entrypoints.metrics import MULTIPROC_ENV
    from telemetry.entrypoints.slow_clients import HeaderDeadlineProtocol

    s = inv.settings()
    if (args.tls_certfile is None) != (args.tls_keyfile is None):
        raise ConfigError("serve: --tls-certfile and --tls-keyfile go together")
    for path in (args.tls_certfile, args.tls_keyfile):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"serve: cannot read {path}")
    make_private_dirs(s.data_dir)
    container = inv.container()
    check_backends(container, s)  # before uvicorn, which would print a traceback
    # One process serves this container; several each build their own from the environment
    # (uvicorn imports the factory by name in each).
    app: Any = "telemetry.entrypoints.http.server:app_from_env"
    if args.workers <= 1:
        app = functools.partial(server.app_for, container)
    # Several processes share the port: each keeps its metrics in this directory, and whichever
    # answers /metrics sums them all (docs/adr/0008-prometheus-metrics.md).
    metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="telemetry-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    # ... and they share one table of rate-limit buckets, so that a key gets the configured
    # rate, not N times it.
    limits_dir = None
    if args.workers > 1 and s.rate_limit_file is None:
        limits_dir = tempfile.mkdtemp(prefix="telemetry-ratelimit-")  # 0700
        os.environ["TELEMETRY_RATE_LIMIT_FILE"] = os.path.join(limits_dir, "buckets")
    try:
        uvicorn.run(
            app,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            http=HeaderDeadlineProtocol,
            ssl_certfile=args.tls_certfile,
            ssl_keyfile=args.tls_keyfile,
            log_level=s.log_level.lower(),
            log_config=logs.uvicorn_log_config(s.log_format, s.log_level),
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        for made in (metrics_dir, limits_dir):
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
    return 0
