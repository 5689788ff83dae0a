"""A local moto server standing in for SQS and S3: for `telemetry demo --backend aws` and the
tests only, never for a deployment (`telemetry aws init` is the product's AWS setup).

moto comes with the `aws-demo` extra (and `dev`): it is imported only when a server is asked
for, with the pip command to run if it is missing. The demo imports this module only on its
`--backend aws` path; import-linter keeps every other product module off it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from telemetry.adapters.private_files import open_private
from telemetry.entrypoints.loopback import free_port

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # No profile, config file or instance metadata: nothing may reach a real account.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
REAL_CREDENTIALS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_SECURITY_TOKEN")
"""Variables that would reach a real account: dropped wherever the fake credentials go."""


def fake_credentials_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with fake credentials instead of any real ones."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in REAL_CREDENTIALS}
    env.update(FAKE_CREDENTIALS)
    return env


def local_aws_env(endpoint_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Fake credentials, and every AWS call sent to `endpoint_url`."""
    return {**fake_credentials_env(base), "AWS_ENDPOINT_URL": endpoint_url}


def faster_moto_receive(backend_class: Any = None) -> Callable[..., bool] | None:
    """An O(1) replacement for moto's retention check, or None if moto changed shape.

    moto checks each message it hands out by building all of its queue's attributes, which
    counts every message in the queue: a receive from a backlog of n costs O(n) per message.
    Same rule, read from the queue directly.
    """
    from moto.sqs import models

    if backend_class is None:
        backend_class = models.SQSBackend
    if not hasattr(backend_class, "is_message_valid_based_on_retention_period"):
        return None

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str,
                                                   message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        # Looked up at each call, not bound once: tests move moto's clock by replacing it.
        now = models.unix_time()  # type: ignore[attr-defined]
        return bool(retain_until > now)

    return is_message_valid_based_on_retention_period


def serve_moto(argv: list[str]) -> None:
    """`python -m moto.server`, with the faster retention check (run in its own process)."""
    from moto.server import main
    from moto.sqs.models import SQSBackend

    fast = faster_moto_receive(SQSBackend)
    if fast is not None:
        SQSBackend.is_message_valid_based_on_retention_period = fast  # type: ignore[method-assign]
    main(argv)


class MotoServer:
    """`python -m moto.server` on a free loopback port, as a child process.

    A process, not moto's in-thread server, so the code under test talks real HTTP to it and
    its slowness or crash cannot block the test process. Its log (`log_path`) is the user's
    alone, like every file of the pipeline: it holds request paths with queue and bucket names.
    """

    LAUNCH = (
        "import sys; from telemetry.entrypoints.local_aws import serve_moto; "
        "serve_moto(sys.argv[1:])"
    )

    def __init__(
        self, log_path: Path | None = None, *, launch: str = LAUNCH, cwd: Path | None = None
    ) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            from telemetry.entrypoints.settings import install_hint

            raise RuntimeError(
                f"the local AWS backend needs moto's server, the aws-demo extra: "
                f"{install_hint('aws-demo')}"
            )
        self.log_path = log_path
        self.launch = launch  # Python code run with `-c`; it gets moto.server's arguments
        self.cwd = cwd
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        for _ in range(3):  # the free port may be taken between probing and binding
            port = free_port()
            if self.log_path is not None:
                self._log = os.fdopen(  # closed by stop()
                    open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "ab")
            self._proc = subprocess.Popen(
                [sys.executable, "-c", self.launch, "-H", "127.0.0.1", "-p", str(port)],
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=fake_credentials_env(),
                cwd=self.cwd,
            )
            self.url = f"http://127.0.0.1:{port}"
            if self._wait_ready(timeout):
                return self.url
            self.stop()
        raise RuntimeError("moto server did not start")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):  # noqa: S310
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set `values` in os.environ (and drop credentials it must not see) for the block:
    boto3 clients built in this process read it."""
    saved = dict(os.environ)
    for k in REAL_CREDENTIALS:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def local_stack(
    queue: str = "telemetry-demo",
    bucket: str = "telemetry-demo",
    *,
    visibility_timeout: int = 60,
    log_path: Path | None = None,
) -> Iterator[dict[str, str]]:
    """A moto server with the queues and bucket `aws init` makes; yields the environment
    (fake credentials, AWS_ENDPOINT_URL, TELEMETRY_QUEUE=sqs, ...) that points at it."""
    from telemetry.entrypoints.aws import provision

    with MotoServer(log_path) as server:
        aws_env = local_aws_env(server.url, {})
        with patched_environ(aws_env):
            settings = provision(queue, bucket, region="us-east-1",
                                 visibility_timeout=visibility_timeout)
        yield {**aws_env, **settings}
