"""Schemathesis against the app's own OpenAPI document, in process (ASGI): no server errors,
and every response conforms to what the document says (status, content type, body, headers).

Requests carry a valid key for `*`, so generated readings get past 401/403 and reach the
decoder and the rules; the clock is fixed at `NOW`, so schema-valid timestamps up to it are in
the window. Positive-data acceptance is not checked: the schema cannot say "not later than now
plus the clock skew", so a schema-valid reading may rightly get a 422.
"""

from __future__ import annotations

from typing import Any

import msgspec
import schemathesis
from dependency_injector import providers
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.settings import Settings
from tests.integration.http_support import KEY, make_container
from tests.strategies import NOW
from tests.support.fakes import FakeClock


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """The schema of an NDJSON body is one reading: send it as one line."""
    return msgspec.json.encode(value) + b"\n"


def _fits_msgpack(value: Any) -> Any:
    """msgpack has no integers beyond 64 bits; a client would have to send them as floats."""
    if isinstance(value, dict):
        return {k: _fits_msgpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fits_msgpack(v) for v in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    return msgspec.msgpack.encode(_fits_msgpack(value))


def api() -> Any:
    settings = Settings(queue="memory", storage="memory", rate_burst=1_000_000)
    container = make_container(settings, vehicles=["*"])
    container.clock.override(providers.Object(FakeClock(NOW)))
    app = create_apps(container).ops  # the document and every operation in it
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    schema.config.generation.update(
        max_examples=50, deterministic=True,
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
    return schema


# Built at collection: schemathesis' lazy `from_fixture` loader fails under pytest 9
# ('Function' object has no attribute '_nodeid'), so the schema is loaded eagerly.
schema = api()


@schema.parametrize()
def test_no_server_errors_and_responses_as_documented(case: Any) -> None:
    case.call_and_validate(
        headers={"X-API-Key": KEY},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
            ignored_auth,
            negative_data_rejection,
        ],
    )
