"""A deadline on a request's headers, which uvicorn does not have.

uvicorn's keep-alive timeout runs only between requests, and stops at the first byte of the
next one, so a client that sends a byte of headers now and then holds its connection (and a
file descriptor) for ever. This protocol closes a connection whose request headers are not
complete within `HEADER_TIMEOUT` seconds of the request's first byte (or of the connection,
for the first request). Body timeouts are the job of the proxy in front (docs/security.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Set once per process, from TELEMETRY_HEADER_TIMEOUT, before the server accepts (`configure`).
HEADER_TIMEOUT = [10.0]


def configure(seconds: float) -> None:
    HEADER_TIMEOUT[0] = seconds


class HeaderDeadlineProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT[0], self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
