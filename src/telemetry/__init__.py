"""Fleet telemetry pipeline: ingest, queue, lake, aggregates."""

__version__ = "0.1.0"
