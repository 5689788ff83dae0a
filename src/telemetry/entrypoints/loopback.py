"""A free TCP port on the loopback interface, for the child servers the demo and the local AWS
stand-in start (and the tests and benchmarks that do the same)."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now. Another process may take it before the caller binds it;
    the callers start a server on it at once and fail loudly if it is taken."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
