"""Structured logs: one event per line, as `key=value` text or as JSON.

Nothing here ever receives an API key: handlers log the key's name, never its value.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

_json = msgspec.json.Encoder()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return _json.encode(doc).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        t = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = f"{t} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        line = f"{line} {tail}" if tail else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(v: Any) -> str:
    if isinstance(v, dict | list):
        return _json.encode(v).decode()
    return str(v)


def formatter(fmt: str = "text") -> logging.Formatter:
    """The project's formatter (also a `logging.config` factory: `{"()": ..., "fmt": ...}`)."""
    return _JsonFormatter() if fmt == "json" else _TextFormatter()


def uvicorn_log_config(fmt: str, level: str) -> dict[str, Any]:
    """uvicorn's loggers on the project's format, in every server process (uvicorn applies
    this itself, before our app factory runs, in each worker it spawns)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"telemetry": {"()": f"{__name__}.formatter", "fmt": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "telemetry",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # every request would be a line; the ingest's own metrics replace it
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would print every request; our own request metrics replace it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The SDK narrates each client it builds ("Found credentials in environment variables"):
    # noise at info, kept at debug.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(quiet)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
