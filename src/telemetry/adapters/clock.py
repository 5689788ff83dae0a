"""The real clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.clock import Clock

    def _conforms(x: SystemClock) -> Clock:
        return x
