"""One place that builds boto3 clients for the SQS and S3 adapters.

Each adapter builds its client once, at construction: clients are thread-safe and are shared by
the threads that call the adapter, sessions are not, so a session never outlives this function.
AWS settings come from boto3's own variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials,
`AWS_RETRY_MODE`, `AWS_MAX_ATTEMPTS`); only what boto3 leaves unbounded is fixed here. The region
is taken from `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the config file, whichever of them
the installed botocore reads itself (1.44 ignores `AWS_REGION`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config

# Enough for a throttled call to get through a short burst, few enough that a caller hears of
# an outage within seconds (ingest answers 503 and the client retries; the worker backs off).
DEFAULT_MAX_ATTEMPTS = 4
CONNECT_TIMEOUT_S = 3.0
# The ingest service calls the adapter from 64 sender threads (http/sender.py SEND_THREADS): one
# connection each, so none waits for another's.
MAX_POOL_CONNECTIONS = 64


class AwsSetupError(Exception):
    """No region or no credentials: the message names what is missing and how to set it."""


NO_REGION = ("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or `region` in the AWS "
             "config file)")
NO_CREDENTIALS = ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                  "AWS_PROFILE with a credentials file, or run with an IAM role)")


def resolve_region(core: botocore.session.Session | None = None) -> str | None:
    """AWS_REGION, then AWS_DEFAULT_REGION, then the config file (through botocore)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    session = core or botocore.session.get_session()
    region = session.get_config_variable("region")
    return str(region) if region else None


_loaders: dict[str | None, Any] = {}
_loaders_lock = threading.Lock()


def _shared_loader(core: botocore.session.Session) -> Any:
    """Service models parsed once per process: a fresh session would parse them again, which
    costs more than building the client itself."""
    data_path = core.get_config_variable("data_path")
    with _loaders_lock:
        if data_path not in _loaders:
            _loaders[data_path] = botocore.loaders.create_loader(data_path)
        return _loaders[data_path]


def make_client(
    service: str,
    *,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    read_timeout: float,
    max_attempts: int | None = None,
) -> Any:
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader(core))
    region_name = region_name or resolve_region(core)
    if not region_name:
        raise AwsSetupError(NO_REGION)
    # Without this check botocore says so at the first call, as a traceback from deep inside
    # a thread, or as a queue "unavailable" retried for ever.
    try:
        credentials = core.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # partial, or a profile that is not there
        raise AwsSetupError(f"AWS credentials: {exc}") from None
    if credentials is None:
        raise AwsSetupError(NO_CREDENTIALS)
    # retry_mode resolves AWS_RETRY_MODE, then the config file, then botocore's default
    # ("standard"); passing it explicitly keeps the choice visible without overriding the user.
    mode = core.get_config_variable("retry_mode") or "standard"
    attempts = max_attempts or core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    retries: Any = {"mode": mode, "total_max_attempts": int(attempts)}
    config = Config(
        retries=retries,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=read_timeout,
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    session = boto3.session.Session(botocore_session=core, region_name=region_name)
    return session.client(service, endpoint_url=endpoint_url, config=config)  # type: ignore[call-overload]
