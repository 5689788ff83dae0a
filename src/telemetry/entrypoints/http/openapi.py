"""The OpenAPI document of the ingest API: response shapes, the request body Litestar cannot
infer from a handler that reads its body raw, examples, and the document's own settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)

from telemetry.domain.readings import Reading, ReadingBatch
from telemetry.entrypoints.http import bodies


class AcceptedBody(msgspec.Struct):
    """Every reading of the request is durably enqueued."""

    accepted: int
    reading_ids: list[str]


class ErrorBody(msgspec.Struct):
    """Litestar's error body."""

    status_code: int
    detail: str


class ProblemBody(msgspec.Struct):
    index: int
    field: str
    message: str


class InvalidBody(msgspec.Struct):
    """422: `extra` lists every problem; `index` -1 is the request as a whole."""

    status_code: int
    detail: str
    extra: list[ProblemBody]


class ReadyBody(msgspec.Struct):
    status: str
    queue: str
    storage: str


def _inline_schema(tp: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of `tp` with every `$ref` resolved in place.

    Litestar rebuilds `components.schemas` from the types it sees, and it never sees the
    request body (the handler reads it raw), so the body schema must stand on its own.
    """
    (root,), defs = msgspec.json.schema_components((tp,), ref_template="{name}")

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    out: dict[str, Any] = resolve(root)
    return out


_EXAMPLE_READING: dict[str, Any] = {
    "vehicle_id": "car-1",
    "ts": "2026-11-29T01:02:03.250Z",
    "signals": {"Vehicle.Speed": 42.5, "Vehicle.IsMoving": True, "Vehicle.Gear": "D"},
}
_EXAMPLE_BATCH = {"readings": [_EXAMPLE_READING, {**_EXAMPLE_READING, "reading_id": "car-1:7"}]}


@dataclass
class IngestOperation(Operation):
    """The operation of `POST /v1/readings` with what Litestar cannot infer from a handler
    that reads its body raw: the request body in its three formats, and Retry-After."""

    max_batch: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self._add_request_body()
        self._add_retry_after()

    def _add_request_body(self) -> None:
        max_batch = self.max_batch
        batch = _inline_schema(ReadingBatch)
        batch["properties"]["readings"].update(minItems=1, maxItems=max_batch)
        reading = _inline_schema(Reading)
        self.request_body = RequestBody(
            required=True,
            description=(
                f"1..{max_batch} readings. At most 1 MiB on the wire and 8 MiB after "
                "`Content-Encoding: gzip` (defaults, both configurable). Unknown fields "
                "are rejected. `reading_id` is derived from the content when absent."
            ),
            content={
                bodies.JSON: OpenAPIMediaType(
                    schema=batch,  # type: ignore[arg-type]  # JSON Schema as msgspec emits
                    examples={"two readings": Example(value=_EXAMPLE_BATCH)},
                ),
                bodies.NDJSON: OpenAPIMediaType(
                    schema=reading,  # type: ignore[arg-type]
                    examples={"one reading per line": Example(
                        summary="each line is one reading object; blank lines are skipped",
                        value=_EXAMPLE_READING,
                    )},
                ),
                bodies.MSGPACK: OpenAPIMediaType(
                    schema=batch,  # type: ignore[arg-type]
                    examples={"two readings": Example(
                        summary="the JSON shape, msgpack-encoded; `ts` may also be a "
                        "msgpack timestamp",
                        value=_EXAMPLE_BATCH,
                    )},
                ),
            },
        )

    def _add_retry_after(self) -> None:
        retry_after = OpenAPIHeader(
            description="Seconds to wait before retrying.",
            schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
            required=True,
        )
        for code in ("429", "503"):
            response = (self.responses or {}).get(code)
            if response is not None and hasattr(response, "headers"):
                response.headers = {"Retry-After": retry_after}


def ingest_operation(max_batch: int) -> type[Operation]:
    """`IngestOperation` for a server whose batches hold at most `max_batch` readings."""
    return type("IngestOperation", (IngestOperation,), {"max_batch": max_batch})


def _error(description: str, status: int, detail: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ErrorBody,
        description=description,
        generate_examples=False,
        examples=[Example(value={"status_code": status, "detail": detail})],
    )


INGEST_RESPONSES: dict[int, ResponseSpec] = {
    202: ResponseSpec(
        data_container=AcceptedBody,
        description="Every reading is durably enqueued; ids in request order.",
        generate_examples=False,
        examples=[Example(value={"accepted": 2, "reading_ids": [
            "5f0c3b1f3f1e4c2b9d0a7e6f5a4b3c2d", "car-1:7"]})],
    ),
    400: _error("The body is not decodable: bad JSON, NDJSON, msgpack or gzip, a wrong "
                "top-level shape, or a body cut off before its Content-Length.",
                400, 'body must be an object {"readings": [reading, ...]}'),
    401: _error("Missing or unknown API key (never says which).",
                401, "missing or unknown API key"),
    403: _error("The key may not send for one of the vehicle ids.",
                403, "not allowed for vehicle(s): truck-9"),
    413: _error("The body is over the wire limit or, inflated, over the decompressed limit.",
                413, "body exceeds the limit of 1048576 bytes"),
    415: _error("Unsupported Content-Type or Content-Encoding.",
                415, "unsupported content type 'text/plain'"),
    422: ResponseSpec(
        data_container=InvalidBody,
        description="A reading breaks a rule, or the request holds no reading or more than "
        "max batch; `extra` lists every problem with the reading's index (-1: the request) "
        "and the field.",
        generate_examples=False,
        examples=[Example(value={
            "status_code": 422,
            "detail": "1 reading(s) break the rules",
            "extra": [{"index": 3, "field": "ts", "message": "before 2000-01-01T00:00:00Z"}],
        })],
    ),
    429: _error("The key's rate limit is exceeded; retry after Retry-After seconds.",
                429, "rate limit exceeded"),
    500: _error("An unexpected error. Retrying is safe: reading ids make it idempotent.",
                500, "Internal Server Error"),
    503: _error("The queue is unavailable or did not answer in time; retry after "
                "Retry-After seconds. Retrying is safe: reading ids make it idempotent.",
                503, "queue unavailable, retry later"),
}


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Fleet telemetry ingest",
        version="1",
        description="Vehicles post readings; the service answers 202 only once they are "
        "durably enqueued. See docs/ingest-api.md.",
        # /schema itself is the JSON document (as the contract says); a browsable UI sits at
        # /schema/swagger (it loads its assets from a CDN).
        render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]),
                        SwaggerRenderPlugin(path="/swagger")],
        components=Components(security_schemes={
            "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header",
                                     description="`tk_<id>_<secret>`, from `telemetry keys "
                                     "create`"),
        }),
    )
