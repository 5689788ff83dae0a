"""Configuration from `TELEMETRY_*` environment variables, and optionally a TOML file.

Every setting is checked at start; a bad one stops the process with a message naming it.
Precedence: environment, then the file named by TELEMETRY_CONFIG_FILE, then the default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from telemetry.domain import triggers

T = TypeVar("T")
MiB = 1024 * 1024


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./data")
    queue: str = "sqlite"
    storage: str = "filesystem"
    sqs_queue_url: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    # queue semantics (sqlite and memory; SQS takes them from the queue's own attributes)
    visibility_timeout: float = 60.0
    max_receives: int = 5
    max_message_bytes: int = MiB
    # ingest limits (contract sections 2 and 3)
    max_batch: int = 1000
    max_signals: int = 256
    max_clock_skew: float = 300.0
    # 35 days: a vehicle parked or out of coverage for a month uploads its backlog, with days
    # to spare for the gateway to catch up (docs/security.md)
    max_lateness: float = 35 * 86400.0
    max_request_hours: int = 24
    max_body_bytes: int = MiB
    max_decompressed_bytes: int = 8 * MiB
    enqueue_timeout: float = 5.0
    # per-key token bucket, requests per second and burst, per ingest process
    rate_limit: float = 10_000.0
    rate_burst: int = 20_000
    ready_timeout: float = 2.0
    # the operations listener (/metrics, /readyz, /schema): loopback unless said otherwise
    ops_host: str = "127.0.0.1"
    ops_port: int = 8001
    # a request's headers must be complete this long after its first byte (slow clients)
    header_timeout: float = 10.0
    # the key store file; None means $TELEMETRY_DATA_DIR/keys.json
    keys_file: Path | None = None
    # worker batching policy
    batch_max_readings: int = 20_000
    batch_max_bytes: int = 8 * MiB
    batch_max_age: float = 5.0
    batch_max_open_hours: int = 8
    # messages asked for per receive; SQS caps a receive at 10 whatever is asked
    receive_max: int = 100
    # partial aggregates (ADR 0006): the worker writes what it kept at least this often
    partials_every: float = 60.0
    compress: bool = False
    # curated hours (docs/curated.md), written by `telemetry aggregate`
    curate: bool = True
    curated_format: str = "jsonl"
    curate_grace: float = 600.0  # seconds after an hour's end before it is curated
    curated_part_bytes: int = 128 * MiB
    raw_retention: float = 0.0  # seconds after an hour's end; 0 keeps raw files forever
    shutdown_deadline: float = 25.0
    # the worker's Prometheus /metrics: 0 = no listener (several workers on a host need a port
    # each); loopback unless told otherwise
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # seconds between a worker's publications of what it saw to the lake (_state/workers/)
    worker_state_every: float = 15.0
    # ADR 0001's triggers (defaults in telemetry.domain.triggers)
    trigger_send_rate: float = triggers.SEND_RATE_PER_S
    trigger_duplicate_rate: float = triggers.DUPLICATE_RATE
    trigger_oldest_age: float = triggers.OLDEST_AGE_S
    trigger_latency_margin: float = triggers.LATENCY_MARGIN_S
    trigger_window: float = triggers.WINDOW_S
    # logs
    log_format: str = "text"
    log_level: str = "INFO"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def keys_path(self) -> Path:
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

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            data_dir=str(self.data_dir),
            lake_dir=str(self.lake_dir),
            queue_path=str(self.queue_path),
            keys_path=str(self.keys_path),
            keys_file=str(self.keys_path),
        )
        return d


def install_hint(extra: str) -> str:
    """The pip command that installs an optional extra."""
    return (f"pip install 'fleet-telemetry[{extra}]' (in a checkout of the source: "
            f"pip install -e '.[{extra}]')")


def _env_name(field: str) -> str:
    return "TELEMETRY_" + field.upper()


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _positive(conv: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        v = conv(text)
        if v <= 0:  # type: ignore[operator]
            raise ValueError("must be greater than 0")
        return v

    return parse


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError("must be a port number, 0 to 65535 (0: off)")
    return v


def _not_negative(text: str) -> float:
    v = float(text)
    if not v >= 0:  # NaN too
        raise ValueError("must be 0 or more")
    return v


def _ops_port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError("must be a port number, 0-65535 (0: any free port)")
    return v


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        v = text.strip().lower()
        if v not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return v

    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {
    "data_dir": lambda s: Path(s).expanduser(),
    "queue": _choice("sqlite", "sqs", "memory"),
    "storage": _choice("filesystem", "s3", "memory"),
    "sqs_queue_url": str.strip,
    "s3_bucket": str.strip,
    "s3_prefix": lambda s: s.strip().strip("/"),
    "visibility_timeout": _positive(float),
    "max_receives": _positive(int),
    "max_message_bytes": _positive(int),
    "max_batch": _positive(int),
    "max_signals": _positive(int),
    "max_clock_skew": _positive(float),
    "max_lateness": _positive(float),
    "max_request_hours": _positive(int),
    "max_body_bytes": _positive(int),
    "max_decompressed_bytes": _positive(int),
    "enqueue_timeout": _positive(float),
    "rate_limit": _positive(float),
    "rate_burst": _positive(int),
    "ready_timeout": _positive(float),
    "ops_host": str.strip,
    "ops_port": _ops_port,
    "header_timeout": _positive(float),
    "keys_file": lambda s: Path(s).expanduser() if s.strip() else None,
    "batch_max_readings": _positive(int),
    "batch_max_bytes": _positive(int),
    "batch_max_age": _positive(float),
    "batch_max_open_hours": _positive(int),
    "receive_max": _positive(int),
    "partials_every": _positive(float),
    "compress": _parse_bool,
    "curate": _parse_bool,
    "curated_format": _choice("jsonl", "parquet"),
    "curate_grace": _not_negative,
    "curated_part_bytes": _positive(int),
    "raw_retention": _not_negative,
    "shutdown_deadline": _positive(float),
    "worker_metrics_port": _port,
    "worker_metrics_host": str.strip,
    "worker_state_every": _positive(float),
    "trigger_send_rate": _positive(float),
    "trigger_duplicate_rate": _not_negative,
    "trigger_oldest_age": _not_negative,
    "trigger_latency_margin": _not_negative,
    "trigger_window": _positive(float),
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
}


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
            if k not in _PARSERS:
                raise ConfigError(f"TELEMETRY_CONFIG_FILE: unknown setting {k!r} in {cfg_file}")
            raw[k] = str(v).lower() if isinstance(v, bool) else str(v)
            where[k] = f"{k}={raw[k]!r} in {cfg_file}"
    for f in fields(Settings):
        name = _env_name(f.name)
        if name in env:
            raw[f.name] = env[name]
            where[f.name] = f"{name}={env[name]!r}"
    values: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            values[key] = _PARSERS[key](text)
        except ValueError as exc:
            raise ConfigError(f"{where[key]}: {exc}") from None
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    s = Settings(**values)
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
