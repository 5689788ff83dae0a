"""Configuration from `TELEMETRY_*` environment variables, and optionally a TOML file.

Every setting is checked at start; a bad one stops the process with a message naming it.
Precedence: environment, then the file named by TELEMETRY_CONFIG_FILE, then the default.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from telemetry.domain import triggers

MiB = 1024 * 1024

# A bad value's message is the description of its constraint.
Positive = Annotated[float, msgspec.Meta(gt=0, description="must be greater than 0")]
PositiveInt = Annotated[int, msgspec.Meta(gt=0, description="must be greater than 0")]
NotNegative = Annotated[float, msgspec.Meta(ge=0, description="must be 0 or more")]
# A listener's port: a number, 0 for any free port (the listener logs the one it got), or
# `off` (None here) for no listener at all.
ListenPort = Annotated[int, msgspec.Meta(
    ge=0, le=65535, description="must be a port number, 0 to 65535 (0: any free port), or off")]
OFF = "off"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting, typed and constrained; `load_settings` decodes them once, at start."""

    data_dir: Path = Path("./data")
    queue: Literal["sqlite", "sqs", "memory"] = "sqlite"
    storage: Literal["filesystem", "s3", "memory"] = "filesystem"
    sqs_queue_url: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    # queue semantics (sqlite and memory; SQS takes them from the queue's own attributes)
    visibility_timeout: Positive = 60.0
    max_receives: PositiveInt = 5
    max_message_bytes: PositiveInt = MiB
    # ingest limits (contract sections 2 and 3)
    max_batch: PositiveInt = 1000
    max_signals: PositiveInt = 256
    max_clock_skew: Positive = 300.0
    # 35 days: a vehicle parked or out of coverage for a month uploads its backlog, with days
    # to spare for the gateway to catch up (docs/security.md)
    max_lateness: Positive = 35 * 86400.0
    max_request_hours: PositiveInt = 24
    max_body_bytes: PositiveInt = MiB
    max_decompressed_bytes: PositiveInt = 8 * MiB
    enqueue_timeout: Positive = 5.0
    # per-key token bucket, requests per second and burst
    rate_limit: Positive = 10_000.0
    rate_burst: PositiveInt = 20_000
    # buckets shared by every process of a host that names this file (`serve --workers N`
    # makes one for its processes); None: each process keeps its own
    rate_limit_file: Path | None = None
    ready_timeout: Positive = 2.0
    # the operations listener (/metrics, /readyz, /schema): loopback unless said otherwise
    ops_host: str = "127.0.0.1"
    ops_port: ListenPort | None = 8001
    # a request's headers must be complete this long after its first byte (slow clients)
    header_timeout: Positive = 10.0
    # the key store file; None means $TELEMETRY_DATA_DIR/keys.json
    keys_file: Path | None = None
    # worker batching policy
    batch_max_readings: PositiveInt = 20_000
    batch_max_bytes: PositiveInt = 8 * MiB
    batch_max_age: Positive = 5.0
    batch_max_open_hours: PositiveInt = 8
    # messages asked for per receive; SQS caps a receive at 10 whatever is asked
    receive_max: PositiveInt = 100
    # partial aggregates (ADR 0006): the worker writes what it kept at least this often
    partials_every: Positive = 60.0
    compress: bool = False
    # curated hours (docs/curated.md), written by `telemetry aggregate`
    curate: bool = True
    curated_format: Literal["jsonl", "parquet"] = "jsonl"
    curate_grace: NotNegative = 600.0  # seconds after an hour's end before it is curated
    curated_part_bytes: PositiveInt = 128 * MiB
    raw_retention: NotNegative = 0.0  # seconds after an hour's end; 0 keeps raw files forever
    shutdown_deadline: Positive = 25.0
    # the worker's operations listener (/metrics, /healthz): off unless asked for (several
    # workers on a host need a port each); loopback unless told otherwise
    worker_metrics_port: ListenPort | None = None
    worker_metrics_host: str = "127.0.0.1"
    # seconds between a worker's publications of what it saw to the lake (_state/workers/)
    worker_state_every: Positive = 15.0
    # ADR 0001's triggers (defaults in telemetry.domain.triggers)
    trigger_send_rate: Positive = triggers.SEND_RATE_PER_S
    trigger_duplicate_rate: NotNegative = triggers.DUPLICATE_RATE
    trigger_oldest_age: NotNegative = triggers.OLDEST_AGE_S
    trigger_latency_margin: NotNegative = triggers.LATENCY_MARGIN_S
    trigger_window: Positive = triggers.WINDOW_S
    # logs
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def api_keys_path(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "keys.json"

    @property
    def thresholds(self) -> triggers.Thresholds:
        return triggers.Thresholds(
            send_rate_per_s=self.trigger_send_rate,
            duplicate_rate=self.trigger_duplicate_rate,
            oldest_age_s=self.trigger_oldest_age,
            latency_margin_s=self.trigger_latency_margin,
            window_s=self.trigger_window,
        )


def install_hint(extra: str) -> str:
    """The pip command that installs an optional extra."""
    return (f"pip install 'fleet-telemetry[{extra}]' (in a checkout of the source: "
            f"pip install -e '.[{extra}]')")


def _env_name(field: str) -> str:
    return "TELEMETRY_" + field.upper()


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _normalize(name: str, text: str) -> Any:
    """What the text of a setting means before it is typed: the quirks msgspec does not know."""
    text = text.strip()
    if name in _CHOICES:
        return text.upper() if name == "log_level" else text.lower()
    if name == "s3_prefix":
        return text.strip("/")
    if name == "keys_file":
        return text or None
    if name in _LISTEN_PORTS:
        return None if text.lower() == OFF else text
    if _HINTS.get(name) is bool:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else text
    return text


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Path and isinstance(obj, str):
        return Path(obj).expanduser()
    raise NotImplementedError


_KINDS = {int: "an integer", float: "a number"}


def _explain(name: str, error: str) -> str:
    """A setting's constraint in words, from its type: the message that names it when bad."""
    hint = _HINTS[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: X's words
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        error = error.replace(" | null", "")
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    words = [f"expected {_KINDS[base]}"] if "got `str`" in error and base in _KINDS else []
    words += [m.description for m in getattr(hint, "__metadata__", ())
              if isinstance(m, msgspec.Meta) and m.description]
    if words:
        return "; ".join(words)
    if name in _CHOICES:
        return "must be one of " + ", ".join(o.lower() for o in _CHOICES[name])
    if hint is bool:
        return "expected true or false"
    return f"expected {getattr(hint, '__name__', hint)}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    where: dict[str, str] = {}  # how a message names each setting: as the user wrote it
    cfg_file = env.get("TELEMETRY_CONFIG_FILE")
    if cfg_file:
        try:
            with open(cfg_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"TELEMETRY_CONFIG_FILE: cannot read {cfg_file}: {exc}") from exc
        for k, v in file_values.items():
            if k not in _HINTS:
                raise ConfigError(f"TELEMETRY_CONFIG_FILE: unknown setting {k!r} in {cfg_file}")
            raw[k] = str(v).lower() if isinstance(v, bool) else str(v)
            where[k] = f"{k}={raw[k]!r} in {cfg_file}"
    for field in _HINTS:
        name = _env_name(field)
        if name in env:
            raw[field] = env[name]
            where[field] = f"{name}={env[name]!r}"
    values = {key: _normalize(key, text) for key, text in raw.items()}
    try:
        s = msgspec.convert(values, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        bad = re.search(r"at `\$\.(\w+)", str(exc))
        if bad is None:  # cannot happen: every value is one field's
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"{where[bad[1]]}: {_explain(bad[1], str(exc))}") from None
    if s.queue == "sqs" and not s.sqs_queue_url:
        raise ConfigError("TELEMETRY_SQS_QUEUE_URL: required when TELEMETRY_QUEUE=sqs "
                          "(`telemetry aws init` prints it)")
    if s.storage == "s3" and not s.s3_bucket:
        raise ConfigError("TELEMETRY_S3_BUCKET: required when TELEMETRY_STORAGE=s3 "
                          "(`telemetry aws init` prints it)")
    # An AWS setting without its backend chosen would otherwise be ignored in silence, and the
    # process run on the local queue or lake instead.
    if s.sqs_queue_url and s.queue != "sqs":
        raise ConfigError(f"TELEMETRY_QUEUE: is {s.queue!r} but TELEMETRY_SQS_QUEUE_URL is set; "
                          "set TELEMETRY_QUEUE=sqs to use it (or unset the URL)")
    for name, value in (("TELEMETRY_S3_BUCKET", s.s3_bucket), ("TELEMETRY_S3_PREFIX", s.s3_prefix)):
        if value and s.storage != "s3":
            raise ConfigError(f"TELEMETRY_STORAGE: is {s.storage!r} but {name} is set; "
                              f"set TELEMETRY_STORAGE=s3 to use it (or unset {name})")
    if s.max_decompressed_bytes < s.max_body_bytes:
        raise ConfigError("TELEMETRY_MAX_DECOMPRESSED_BYTES: must not be below the body limit")
    if s.raw_retention and s.curated_format != "jsonl":
        raise ConfigError("TELEMETRY_RAW_RETENTION: needs TELEMETRY_CURATED_FORMAT=jsonl, the "
                          "lossless format that can stand in for retired raw files")
    if s.raw_retention and not s.curate:
        raise ConfigError("TELEMETRY_RAW_RETENTION: needs TELEMETRY_CURATE=true; raw files "
                          "go only once their hour is curated")
    if s.trigger_window < 2:
        raise ConfigError("TELEMETRY_TRIGGER_WINDOW: must be at least 2 seconds")
    if s.max_message_bytes < 4096:
        raise ConfigError("TELEMETRY_MAX_MESSAGE_BYTES: must be at least 4096")
    return s


_HINTS: dict[str, Any] = typing.get_type_hints(Settings, include_extras=True)
_CHOICES: dict[str, tuple[str, ...]] = {
    name: typing.get_args(hint) for name, hint in _HINTS.items()
    if typing.get_origin(hint) is Literal
}
_LISTEN_PORTS = frozenset(name for name, hint in _HINTS.items()
                          if ListenPort in typing.get_args(hint))
