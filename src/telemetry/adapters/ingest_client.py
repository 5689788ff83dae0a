"""HTTP client of the ingest API, for the simulator, the replayer and the demo.

Each reading gets its reading_id before the first attempt, so a retry after a 429, a 503 or a
network error resends the same ids and the pipeline counts each reading once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import msgspec

from telemetry.domain.readings import derive_reading_id

_json = msgspec.json.Encoder()


@dataclass
class ClientSummary:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    retries: int = 0
    requests: int = 0

    def merge(self, other: ClientSummary) -> None:
        self.sent += other.sent
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.retries += other.retries
        self.requests += other.requests


class RejectedError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def ensure_reading_id(reading: dict[str, Any]) -> str:
    rid = reading.get("reading_id")
    if not rid:
        ts = reading["ts"]
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        rid = derive_reading_id(reading["vehicle_id"], ts, reading["signals"])
        reading["reading_id"] = rid
    return str(rid)


class IngestClient:
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 8,
        max_backoff: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/readings"
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.summary = ClientSummary()
        self._http = httpx.Client(
            timeout=timeout,
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
        )

    def send(self, readings: list[dict[str, Any]]) -> list[str]:
        """Post one request; return the accepted ids, or [] when the service rejected it."""
        for r in readings:
            ensure_reading_id(r)
        body = _json.encode({"readings": readings})
        self.summary.sent += len(readings)
        attempt = 0
        while True:
            self.summary.requests += 1
            retry_after: float | None = None
            try:
                resp = self._http.post(self.url, content=body)
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code == 202:
                ids: list[str] = resp.json()["reading_ids"]
                self.summary.accepted += len(ids)
                return ids
            if resp is not None and resp.status_code not in (429, 502, 503, 504):
                self.summary.rejected += len(readings)
                self.last_error = RejectedError(resp.status_code, resp.text)
                return []
            if resp is not None:
                try:
                    retry_after = float(resp.headers.get("retry-after", ""))
                except ValueError:
                    retry_after = None
            attempt += 1
            if attempt > self.max_retries:
                self.summary.rejected += len(readings)
                self.last_error = RejectedError(resp.status_code if resp else 0, "gave up")
                return []
            self.summary.retries += 1
            backoff = min(self.max_backoff, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
            time.sleep(max(backoff, retry_after or 0.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
