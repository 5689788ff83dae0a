"""The peer for the ingest benchmark: the same endpoint and rules, as a competent FastAPI user
would write it, enqueuing to the same kind of SQLite queue (our `SqliteQueue`).

    python -m bench.fastapi_peer --port 8001 --data-dir /tmp/peer --api-key KEY

Pydantic models carry the contract's rules (patterns, lengths, limits, finite numbers, the
time window) as field constraints and validators; reading ids are a sha256 content hash of the
canonical JSON; readings are packed per UTC hour into JSON-lines messages; the async handler
runs the durable enqueue in the thread pool. One uvicorn process, uvloop and httptools as
uvicorn picks them.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
)

from telemetry.adapters.sqlite_queue import SqliteQueue

MAX_SIGNALS = 256
MAX_SKEW = timedelta(seconds=300)
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)

VehicleId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
SignalName = Annotated[
    str,
    StringConstraints(max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"),
]
Text = Annotated[str, StringConstraints(max_length=256)]
ReadingId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
]


class ReadingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vehicle_id: VehicleId
    ts: AwareDatetime
    signals: dict[SignalName, StrictBool | StrictInt | StrictFloat | Text]
    reading_id: ReadingId | None = None

    @field_validator("ts")
    @classmethod
    def in_window(cls, v: datetime) -> datetime:
        if v < MIN_TS:
            raise ValueError("before 2000-01-01T00:00:00Z")
        if v > datetime.now(UTC) + MAX_SKEW:
            raise ValueError("later than now + 300 s clock skew")
        return v

    @field_validator("signals")
    @classmethod
    def signal_rules(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not 1 <= len(v) <= MAX_SIGNALS:
            raise ValueError(f"1..{MAX_SIGNALS} signals")
        for name, value in v.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: number must be finite")
            if isinstance(value, int) and not isinstance(value, bool) \
                    and not -(2**63) <= value < 2**63:
                raise ValueError(f"{name}: integer out of the 64-bit range")
        return v


class ReadingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    readings: list[ReadingIn] = Field(min_length=1, max_length=1000)


def reading_id(r: ReadingIn) -> str:
    ts = r.ts.astimezone(UTC)
    canonical = json.dumps(
        [r.vehicle_id, f"{ts:%Y-%m-%dT%H:%M:%S}.{ts.microsecond:06d}Z", r.signals],
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(b"telemetry.reading.v1\n" + canonical.encode()).hexdigest()[:32]


def create_app(queue: SqliteQueue, key_hashes: set[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/readings", status_code=202)
    async def post_readings(
        body: ReadingsIn, x_api_key: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        given = hashlib.sha256((x_api_key or "").encode()).hexdigest()
        if not any(hmac.compare_digest(given, h) for h in key_hashes):
            raise HTTPException(401, "missing or unknown API key")
        now = datetime.now(UTC)
        received = now.isoformat().replace("+00:00", "Z")
        ids: list[str] = []
        by_hour: dict[int, list[str]] = {}
        for r in body.readings:
            rid = r.reading_id or reading_id(r)
            ids.append(rid)
            ts = r.ts.astimezone(UTC)
            line = json.dumps({
                "reading_id": rid, "vehicle_id": r.vehicle_id,
                "ts": ts.isoformat().replace("+00:00", "Z"), "received_at": received,
                "signals": r.signals,
            }, separators=(",", ":"))
            by_hour.setdefault(int(ts.timestamp()) // 3600 * 3600, []).append(line)
        messages = [
            (json.dumps({"v": 1, "hour": hour, "n": len(lines)}) + "\n" + "\n".join(lines)
             + "\n").encode()
            for hour, lines in by_hour.items()
        ]
        await run_in_threadpool(queue.send, messages)
        return JSONResponse({"accepted": len(ids), "reading_ids": ids}, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--api-key", required=True)
    args = ap.parse_args(argv)
    queue = SqliteQueue(Path(args.data_dir) / "queue.sqlite3")
    app = create_app(queue, {hashlib.sha256(args.api_key.encode()).hexdigest()})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
