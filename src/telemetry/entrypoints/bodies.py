"""Request bodies of `POST /v1/readings`: read within limits, inflate, decode, list problems.

Everything here happens before a reading reaches the domain, and every failure carries the
status the contract gives it:

- 413 while reading: the wire limit is counted on the bytes as they arrive, the decompressed
  limit on the bytes as they are inflated (`max_length`), so neither a large body nor a gzip
  bomb is ever held whole.
- 400 for what cannot be decoded: a body cut off mid-stream, corrupt gzip, bad JSON/msgpack,
  a wrong top-level shape.
- 422 for readings that decode but break a rule, with every problem listed by index and field.

Decoders are built once, at import: msgspec compiles the types into a decoder up front.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec

from telemetry.domain.errors import Problem
from telemetry.domain.readings import (
    Reading,
    WireBatch,
    WireReading,
    check_patterns,
    describe_problems,
)

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
MSGPACK: Final = "application/msgpack"
MEDIA_TYPES: Final = (JSON, NDJSON, MSGPACK)

# A 422 lists every problem up to this many; past it the detail says how many were left out.
# 1000 readings with several broken fields each fit; a hostile body cannot make a response of
# hundreds of megabytes.
MAX_LISTED_PROBLEMS = 10_000


class BodyError(Exception):
    """A body the service will not take. `reason` is a metric label and log field."""

    status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BadBody(BodyError):
    status = 400


class TooLarge(BodyError):
    status = 413


class Unsupported(BodyError):
    status = 415


class Unprocessable(BodyError):
    status = 422

    def __init__(self, problems: list[Problem], readings: int) -> None:
        n = len({p.index for p in problems})
        detail = f"{n} reading(s) break the rules" if n else "the request breaks the rules"
        if len(problems) > MAX_LISTED_PROBLEMS:
            detail += f"; the first {MAX_LISTED_PROBLEMS} of {len(problems)} problems are listed"
        super().__init__("invalid", detail)
        self.problems = problems[:MAX_LISTED_PROBLEMS]
        self.readings = readings


def media_type(content_type: str | None) -> str:
    """The body format from a Content-Type header, parameters (charset) ignored; else 415."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in MEDIA_TYPES:
        return ctype
    raise Unsupported(
        "unsupported_type",
        f"unsupported content type {ctype!r}; use one of {', '.join(MEDIA_TYPES)}",
    )


def is_gzip(content_encoding: str | None) -> bool:
    """True for gzip, False for none/identity; 415 for anything else (deflate, br, stacked)."""
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return False
    if enc in ("gzip", "x-gzip"):
        return True
    raise Unsupported("unsupported_encoding", f"unsupported content encoding {enc!r}; use gzip")


class _Inflater:
    """Incremental gzip inflation that stops at `limit` output bytes.

    `max_length` caps what one `decompress` call may produce; input it did not get to waits in
    `unconsumed_tail`. So memory is bounded by the limit whatever the compression ratio.
    Concatenated gzip members (what `cat a.gz b.gz` makes) are one stream, as in `gzip -d`.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._out = bytearray()
        self._d = zlib.decompressobj(wbits=31)
        self._fed = False  # has the current member seen any input?
        self._members = 0

    def feed(self, data: bytes) -> None:
        buf = data
        while buf:
            self._fed = True
            try:
                chunk = self._d.decompress(buf, self._limit - len(self._out) + 1)
            except zlib.error as exc:
                raise BadBody("bad_gzip", f"body is not valid gzip: {exc}") from None
            self._out += chunk
            if len(self._out) > self._limit:
                raise TooLarge(
                    "decompressed_too_large",
                    f"body exceeds the decompressed limit of {self._limit} bytes",
                )
            if self._d.eof:
                self._members += 1
                buf = self._d.unused_data
                self._d = zlib.decompressobj(wbits=31)
                self._fed = False
            else:
                buf = self._d.unconsumed_tail

    def finish(self) -> bytearray:
        if self._fed or self._members == 0:
            raise BadBody("bad_gzip", "gzip stream is truncated")
        return self._out


Receive = Callable[[], Awaitable[Any]]
Body = bytes | bytearray  # msgspec decodes either without a copy


async def read_body(receive: Receive, *, gzip: bool, max_wire: int, max_inflated: int) -> Body:
    """Read the ASGI body, enforcing both limits as bytes arrive; inflate when `gzip`."""
    wire = 0
    inflater = _Inflater(max_inflated) if gzip else None
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client went away before sending the announced length: nothing to answer,
            # but the request must end as a 4xx, not crash the handler.
            raise BadBody("truncated", "the body ended before its announced length")
        chunk = message.get("body", b"")
        if chunk:
            wire += len(chunk)
            if wire > max_wire:
                raise TooLarge("wire_too_large", f"body exceeds the limit of {max_wire} bytes")
            if inflater is not None:
                inflater.feed(chunk)
            else:
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if inflater is not None:
        return inflater.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# ------------------------------------------------------------------ decoding

# The fast path decodes without the pattern constraints and checks names through a cache
# (`check_patterns`): msgspec would run the regex for every string of every reading.
_json_batch = msgspec.json.Decoder(WireBatch)
_json_reading = msgspec.json.Decoder(WireReading)
_msgpack_batch = msgspec.msgpack.Decoder(WireBatch)
# float_hook: a literal like 1e400 becomes inf (a rule break, 422) instead of failing the
# whole untyped decode as "out of range" (which would make it a 400).
_json_any = msgspec.json.Decoder(float_hook=float)
_msgpack_any = msgspec.msgpack.Decoder()
# Where msgspec says an error is: `$.readings[3].ts` (JSON, msgpack) or `$[3].ts` (NDJSON).
_PATH_RE = re.compile(r"\$(\.readings)?\[(\d+)\](?:\.([A-Za-z_]+))?")
_NAMES = {JSON: "JSON", NDJSON: "NDJSON", MSGPACK: "msgpack"}


def decode(fmt: str, body: Body) -> Sequence[Reading]:
    """The typed fast path. Raises BadBody, or msgspec.ValidationError for `explain`."""
    try:
        if fmt == NDJSON:
            lines = _json_reading.decode_lines(body)
            check_patterns(lines, "$")
            return lines
        batch = (_msgpack_batch if fmt == MSGPACK else _json_batch).decode(body)
        check_patterns(batch.readings, "$.readings")
        return batch.readings
    except msgspec.ValidationError:
        raise
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # UnicodeDecodeError: a string that is not UTF-8 (JSON and msgpack alike)
        raise BadBody("bad_body", f"body is not valid {_NAMES[fmt]}: {exc}") from None


def explain(fmt: str, body: Body, error: msgspec.ValidationError) -> Unprocessable:
    """The slow path after the typed decode failed: every problem (422), or BadBody (400)
    when the body does not even have the shape of a request."""
    problems, n = problems_from_untyped(fmt, body, error)
    return Unprocessable(problems, n)


def _from_error(fmt: str, error: msgspec.ValidationError) -> Problem | None:
    """msgspec's own words as a Problem, when its path points into a reading."""
    m = _PATH_RE.search(str(error))
    if m is None or (fmt != NDJSON and m.group(1) is None):
        return None
    return Problem(int(m.group(2)), m.group(3) or "", str(error))


def problems_from_untyped(
    fmt: str, body: Body, error: msgspec.ValidationError
) -> tuple[list[Problem], int]:
    """The slow path after a typed decode failed: every problem and the number of readings,
    or BadBody when the body does not even have the shape of a request."""
    name = _NAMES[fmt]
    try:
        if fmt == NDJSON:
            # The untyped twin of the fast path's decoder, so indexes agree: one per value,
            # that is per non-empty line.
            readings: Any = _json_any.decode_lines(body)
        else:
            obj = (_msgpack_any if fmt == MSGPACK else _json_any).decode(body)
            if not isinstance(obj, dict) or len(obj) != 1 or "readings" not in obj:
                raise BadBody(
                    "bad_body", 'body must be an object {"readings": [reading, ...]}'
                ) from None
            readings = obj["readings"]
            if not isinstance(readings, list):
                raise BadBody("bad_body", '"readings" must be an array') from None
    except msgspec.ValidationError as exc:
        # Untyped decoding fails only on values no type can hold; kept as a safety net.
        p = _from_error(fmt, exc)
        if p is None:
            raise BadBody("bad_body", f"body is not valid {name}: {exc}") from None
        return [p], p.index + 1
    except (msgspec.DecodeError, TypeError, UnicodeDecodeError) as exc:
        # TypeError: a msgpack map keyed by something unhashable. UnicodeDecodeError: a string
        # that is not UTF-8, which the typed decoder may not have reached.
        raise BadBody("bad_body", f"body is not valid {name}: {exc}") from None
    problems = [p for i, r in enumerate(readings) for p in describe_problems(i, r)]
    if not problems:  # the two validators disagree: fall back to msgspec's own words
        p = _from_error(fmt, error)
        problems = [p or Problem(-1, "", str(error))]
    return problems, len(readings)
