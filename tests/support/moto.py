"""AWS for tests, two ways, never a real account: moto in process (`mock_aws`), and a moto
server subprocess on a free loopback port reached through `AWS_ENDPOINT_URL`.

One server serves the whole test run (starting one costs a second or two); tests keep out of
each other's way with unique queue and bucket names. Use the fixtures by assigning them in a
test module or conftest (an import would trip ruff's F811 where they are used):

    from tests.support import moto as moto_server
    aws = moto_server.aws                      # parametrized: mock_aws, moto_server
    moto_server_url = moto_server.moto_server_url

SQS time is virtual in both: `AwsTarget.advance(seconds)` moves moto's SQS clock (visibility
timeouts, retention) without sleeping, in process by patching, in the server through a small
endpoint this module adds to it. What the adapters see is unchanged; only moto's clock moves.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from telemetry.adapters.aws_client import make_client
from telemetry.adapters.s3 import S3Storage, ensure_bucket
from telemetry.adapters.sqs import QueueSpec, SqsQueue, ensure_queue
from telemetry.entrypoints.local_aws import (
    FAKE_CREDENTIALS,
    REAL_CREDENTIALS,
    MotoServer,
    faster_moto_receive,
    local_aws_env,
    serve_moto,
)

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[2]
CLOCK_PATH = "/_tests/sqs-clock"
_server: MotoServer | None = None


# ------------------------------------------------------------------ moto's SQS clock


def shift_sqs_clock(models: Any, offset: Callable[[], float]) -> Callable[[], None]:
    """Make moto's SQS models read the time `offset()` seconds ahead; returns an undo.

    moto's SQS reads the time only through `unix_time` and `unix_time_millis` of its models
    module, so shifting those moves visibility timeouts, delays and retention together.
    """
    real_s, real_ms = models.unix_time, models.unix_time_millis

    def unix_time(dt: Any = None) -> float:
        return real_s(dt) if dt is not None else real_s() + offset()

    def unix_time_millis(dt: Any = None) -> float:
        return real_ms(dt) if dt is not None else real_ms() + offset() * 1000

    models.unix_time, models.unix_time_millis = unix_time, unix_time_millis

    def undo() -> None:
        models.unix_time, models.unix_time_millis = real_s, real_ms

    return undo


def serve_with_clock(argv: list[str]) -> None:
    """The demo's moto server (`serve_moto`, run in its own process) with
    `POST /_tests/sqs-clock?advance=SECONDS` to move its SQS clock."""
    import moto.server
    from moto.sqs import models

    offset = [0.0]
    shift_sqs_clock(models, lambda: offset[0])
    app = moto.server.DomainDispatcherApplication
    moto_call = app.__call__

    def call(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == CLOCK_PATH and environ.get("REQUEST_METHOD") == "POST":
            query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if p)
            offset[0] += float(query.get("advance", 0))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(offset[0]).encode()]
        return moto_call(self, environ, start_response)

    app.__call__ = call  # type: ignore[method-assign]
    serve_moto(argv)


def shared_server_url() -> str:
    """The run's moto server, started on first use and stopped when the process exits."""
    global _server  # noqa: PLW0603 - one server per test process is the point
    if _server is None:
        server = MotoServer(
            launch="import sys; from tests.support.moto import serve_with_clock; "
            "serve_with_clock(sys.argv[1:])",
            cwd=ROOT,
        )
        server.start()
        atexit.register(server.stop)
        _server = server
    return _server.url


def advance_server_clock(url: str, seconds: float) -> None:
    req = urllib.request.Request(f"{url}{CLOCK_PATH}?advance={seconds}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that talks to the shared server with fake credentials."""
    return local_aws_env(shared_server_url(), base)


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


# ------------------------------------------------------------------ targets


class ReceivesOneAtATime:
    """An SQS client whose ReceiveMessage calls run one at a time.

    moto's receive_message takes no lock: two at once hand out the same message and can fail
    with a 500. Real SQS has no such race, so tests of concurrent consumers put this around
    the adapter's client to test the adapter, not moto.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def receive_message(self, **kwargs: Any) -> Any:
        with self._lock:
            return self._client.receive_message(**kwargs)


@dataclass
class AwsTarget:
    """Where the adapters under test send their calls; builds fresh queues and buckets."""

    kind: str  # "mock_aws" or "moto_server"
    endpoint_url: str | None
    advance: Callable[[float], None]  # let this many seconds pass for SQS, without sleeping

    def client(self, service: str) -> Any:
        # Not boto3.client(): mock_aws resets boto3's default session, whose service models
        # would then be parsed again for every test.
        return make_client(service, region_name=REGION, read_timeout=30)

    def queue(
        self,
        *,
        visibility_timeout: int = 30,
        max_receives: int = 5,
        message_size: int = 256 * 1024,
        moto_safe: bool = False,
        **kwargs: Any,
    ) -> SqsQueue:
        """A fresh queue and dead-letter queue, as `aws init` makes them, and its adapter.
        `moto_safe`: receives one at a time (see ReceivesOneAtATime)."""
        spec = QueueSpec(unique("q"), visibility_timeout, max_receives, 4 * 86_400, message_size)
        made = ensure_queue(spec, client=self.client("sqs"))
        if moto_safe:
            kwargs["client"] = ReceivesOneAtATime(self.client("sqs"))
        return SqsQueue(made.url, **kwargs)

    def storage(self, prefix: str = "", **kwargs: Any) -> S3Storage:
        bucket = unique("lake")
        ensure_bucket(bucket, REGION, client=self.client("s3"))
        return S3Storage(bucket, prefix, **kwargs)


@pytest.fixture(scope="session")
def moto_server_url() -> str:
    return shared_server_url()


def _fake_credentials(mp: pytest.MonkeyPatch) -> None:
    for k in REAL_CREDENTIALS:
        mp.delenv(k, raising=False)
    for k, v in FAKE_CREDENTIALS.items():
        mp.setenv(k, v)


@contextlib.contextmanager
def aws_target(kind: str) -> Iterator[AwsTarget]:
    """Fake credentials, and either moto in process or the shared server, for the block."""
    with pytest.MonkeyPatch.context() as mp:
        _fake_credentials(mp)
        if kind == "mock_aws":
            from moto import mock_aws
            from moto.sqs import models

            # Without an endpoint boto3 aims at AWS's hosts, which mock_aws intercepts.
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            fast = faster_moto_receive(models.SQSBackend)  # as the server has it
            if fast is not None:
                mp.setattr(models.SQSBackend, "is_message_valid_based_on_retention_period", fast)
            offset = [0.0]

            def advance(seconds: float) -> None:
                offset[0] += seconds

            undo = shift_sqs_clock(models, lambda: offset[0])
            try:
                with mock_aws():
                    yield AwsTarget(kind, None, advance)
            finally:
                undo()
        elif kind == "moto_server":
            url = shared_server_url()
            mp.setenv("AWS_ENDPOINT_URL", url)
            yield AwsTarget(kind, url, lambda seconds: advance_server_clock(url, seconds))
        else:
            raise ValueError(kind)


@pytest.fixture(params=["mock_aws", "moto_server"])
def aws(request: pytest.FixtureRequest) -> Iterator[AwsTarget]:
    with aws_target(request.param) as target:
        yield target
