"""Request bodies of `POST /v1/readings`: read within limits, inflate, decode, list problems.

Everything here happens before a reading reaches the domain, and every failure carries the
status the contract gives it:

- 413 while reading: the wire limit is counted on the bytes as they arrive, the decompressed
  limit on the bytes as they are inflated (`max_length`), so neither a large body nor a gzip
  bomb is ever held whole. A big gzip body is inflated off the event loop (`inflate`).
- 400 for what cannot be decoded: a body cut off mid-stream, corrupt gzip, bad JSON/msgpack,
  a wrong top-level shape.
- 422 for readings that decode but break a rule, problems listed by index and field (at most
  `MAX_LISTED_PROBLEMS`, with the total), and for a body of more readings than the maximum
  batch, found before any reading is decoded (`check_count`).

Any failure of a decoder is a 400, deep nesting (`RecursionError`) included: never a 500.

Decoders are built once, at import: msgspec compiles the types into a decoder up front.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import weakref
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

import anyio
import msgspec

from telemetry.domain.errors import Problem
from telemetry.domain.readings import (
    Reading,
    WireBatch,
    WireReading,
    check_identifiers,
    describe_problems,
)
from telemetry.entrypoints.http.errors import (
    BadBody,
    TooLarge,
    Unprocessable,
    UnsupportedMedia,
)

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
MSGPACK: Final = "application/msgpack"
MEDIA_TYPES: Final = (JSON, NDJSON, MSGPACK)

# What a decoder may raise on a body that is not what it claims: the JSON/msgpack error, a string
# that is not UTF-8, a msgpack map keyed by something unhashable, nesting deeper than the
# decoder's recursion limit.
DECODER_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, TypeError, RecursionError)


def media_type(content_type: str | None) -> str:
    """The body format from a Content-Type header, parameters (charset) ignored; else 415."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in MEDIA_TYPES:
        return ctype
    raise UnsupportedMedia(
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
    raise UnsupportedMedia("unsupported_encoding",
                           f"unsupported content encoding {enc!r}; use gzip")


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

    def feed(self, data: bytes | memoryview) -> None:
        buf: bytes | memoryview = data
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

    @property
    def size(self) -> int:
        """Bytes inflated so far."""
        return len(self._out)

    def finish(self) -> bytearray:
        if self._fed or self._members == 0:
            raise BadBody("bad_gzip", "gzip stream is truncated")
        return self._out


Receive = Callable[[], Awaitable[Any]]
Body = bytes | bytearray  # msgspec decodes either without a copy

# gzip bodies are inflated on the event loop up to this many bytes out, fed a slice of this
# many bytes in at a time; the rest of a bigger one in a worker thread (zlib lets go of the GIL
# while it inflates), one body at a time per `INFLATE_THREADS`. Deflate expands a byte at most
# about 1,032 times, so one slice adds at most about 528 KiB: the loop's share of any body,
# a gzip bomb's too, is bounded by about 800 KiB of output.
INFLATE_INLINE_BYTES = 256 * 1024
_INFLATE_SLICE = 512
INFLATE_THREADS = 2
# Made on first use by each event loop (a limiter belongs to one).
_inflate_limiters: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary())


def inflate_limiter() -> anyio.CapacityLimiter:
    """The running loop's bound on gzip bodies inflating in threads at once."""
    loop = asyncio.get_running_loop()
    limiter = _inflate_limiters.get(loop)
    if limiter is None:
        limiter = _inflate_limiters[loop] = anyio.CapacityLimiter(INFLATE_THREADS)
    return limiter


async def read_body(receive: Receive, *, gzip: bool, max_wire: int, max_inflated: int) -> Body:
    """Read the ASGI body, enforcing both limits; inflate when `gzip` (see `inflate`)."""
    wire = 0
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
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return await inflate(body, max_inflated) if gzip else body


async def inflate(data: bytes, limit: int) -> bytearray:
    """The inflated gzip `data`, at most `limit` bytes (else 413): the first
    `INFLATE_INLINE_BYTES` or so on the calling loop, the rest in a worker thread."""
    inflater = _Inflater(limit)
    view = memoryview(data)
    at = 0
    while at < len(view) and inflater.size < INFLATE_INLINE_BYTES:
        inflater.feed(view[at:at + _INFLATE_SLICE])
        at += _INFLATE_SLICE
    if at < len(view):
        await anyio.to_thread.run_sync(inflater.feed, view[at:], limiter=inflate_limiter())
    return inflater.finish()


# ------------------------------------------------------------------ decoding

# The fast path decodes without the pattern constraints and checks names through a cache
# (`check_identifiers`): msgspec would run the regex for every string of every reading.
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


def _bad(fmt: str, exc: BaseException) -> BadBody:
    if isinstance(exc, RecursionError):
        return BadBody("bad_body", f"body is not valid {_NAMES[fmt]}: nested too deeply")
    return BadBody("bad_body", f"body is not valid {_NAMES[fmt]}: {exc}")


@functools.cache
def _counters(max_batch: int) -> tuple[Any, Any]:
    """Decoders of a batch's shape that leave each reading undecoded (`Raw`) and stop at more
    than `max_batch` of them: msgpack at the array's header, JSON after one pass of its C
    scanner, which does not build a reading."""
    counted = msgspec.defstruct("Counted", [
        ("readings", Annotated[list[msgspec.Raw], msgspec.Meta(max_length=max_batch)]),
    ])
    return msgspec.json.Decoder(counted), msgspec.msgpack.Decoder(counted)


# A non-blank NDJSON line: JSON forbids raw newlines inside a value, so each is one reading.
_NDJSON_VALUE = re.compile(rb"[^ \t\r\n][^\n]*")


# No encoding of a reading is shorter (msgpack with a one-letter vehicle, a 4-byte timestamp
# and one one-letter signal): a body below max_batch times this cannot hold too many readings.
_MIN_READING_BYTES = 30


def check_count(fmt: str, body: Body, max_batch: int) -> None:
    """Unprocessable (422) when `body` holds more than `max_batch` readings, found before any
    reading is decoded; anything else about the body is left to `decode`."""
    if len(body) < (max_batch + 1) * _MIN_READING_BYTES:
        return  # the rules count what the decoder gives (`ReadingRules.check`)
    # A JSON array of n values holds at least n - 1 commas, NDJSON's n values n - 1 newlines
    # (more inside strings only add to the count): a C scan of the bytes that spares the
    # typical request the counting decode below.
    if fmt != MSGPACK and body.count(b"\n" if fmt == NDJSON else b",") < max_batch:
        return
    if fmt == NDJSON:
        values = _NDJSON_VALUE.finditer(body)
        if next(itertools.islice(values, max_batch, None), None) is None:
            return
    else:
        json_counter, msgpack_counter = _counters(max_batch)
        try:
            (msgpack_counter if fmt == MSGPACK else json_counter).decode(body)
            return
        except msgspec.ValidationError as exc:
            if "length <=" not in str(exc) or not str(exc).endswith("`$.readings`"):
                return
        except DECODER_ERRORS as exc:
            raise _bad(fmt, exc) from None
    raise Unprocessable([Problem(-1, "readings", f"more than {max_batch} readings: one request "
                                 f"holds at most {max_batch}; split it")], 0)


def decode(fmt: str, body: Body) -> Sequence[Reading]:
    """The typed fast path. Raises BadBody, or msgspec.ValidationError for `explain`."""
    try:
        if fmt == NDJSON:
            lines = _json_reading.decode_lines(body)
            check_identifiers(lines, "$")
            return lines
        batch = (_msgpack_batch if fmt == MSGPACK else _json_batch).decode(body)
        check_identifiers(batch.readings, "$.readings")
        return batch.readings
    except msgspec.ValidationError:
        raise
    except DECODER_ERRORS as exc:
        raise _bad(fmt, exc) from None


def decode_checked(fmt: str, body: Body, max_batch: int) -> Sequence[Reading]:
    """The readings of `body`, or the BodyError that says why not: the count first, then the
    typed decode, then, only when that failed, every problem (`explain`)."""
    check_count(fmt, body, max_batch)
    try:
        return decode(fmt, body)
    except msgspec.ValidationError as exc:
        raise explain(fmt, body, exc) from None


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
    except DECODER_ERRORS as exc:
        # The untyped decoder goes where the typed one stopped: strings that are not UTF-8,
        # unhashable msgpack keys, nesting inside a value the typed one refused at its top.
        raise _bad(fmt, exc) from None
    problems = [p for i, r in enumerate(readings) for p in describe_problems(i, r)]
    if not problems:  # the two validators disagree: fall back to msgspec's own words
        p = _from_error(fmt, error)
        problems = [p or Problem(-1, "", str(error))]
    return problems, len(readings)
