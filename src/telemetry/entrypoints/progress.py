"""One progress line for the long commands (simulate, replay, aggregate, the demo's phases):
done of total, rate and time left, redrawn in place at most five times a second on standard
error, and nothing at all when that is not a terminal (logs, pipes, CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 24


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 or v == int(v) else f"{v:,.1f}"


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"


class Progress:
    """`update(done)` with `done` in the units of `total` (None: unknown, no bar or time left);
    `items` counts what the rate is about (readings, say) when that is not `done` itself."""

    def __init__(
        self,
        label: str,
        total: float | None,
        *,
        unit: str = "",
        items_unit: str | None = None,
        out: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.items_unit = items_unit
        self.out = out if out is not None else sys.stderr
        self.enabled = _is_terminal(self.out) if enabled is None else enabled
        self._clock = clock
        self._every = every
        self._started = clock()
        self._drawn: float | None = None
        self._width = 0

    def line(self, done: float, items: float | None = None, note: str = "") -> str:
        elapsed = max(1e-9, self._clock() - self._started)
        parts: list[str] = []
        if self.total:
            frac = min(1.0, max(0.0, done / self.total))
            parts.append(f"[{'#' * int(frac * _WIDTH):<{_WIDTH}}] {100 * frac:3.0f}%")
            parts.append(f"{_num(done)}/{_num(self.total)}{' ' + self.unit if self.unit else ''}")
        else:
            parts.append(f"{_num(done)}{' ' + self.unit if self.unit else ''}")
        count, unit = (done, self.unit) if items is None else (items, self.items_unit or "")
        parts.append(f"{count / elapsed:,.0f}{' ' + unit if unit else ''}/s")
        if self.total and done > 0:
            left = max(0.0, elapsed * (self.total - done) / done)
            parts.append(f"{_clock(left)} left")
        else:
            parts.append(f"{_clock(elapsed)} elapsed")
        if note:
            parts.append(note)
        return self.label + " " + "  ".join(parts)

    def update(self, done: float, items: float | None = None, note: str = "",
               *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and self._drawn is not None and now - self._drawn < self._every:
            return
        self._drawn = now
        text = self.line(done, items, note)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        print("\r" + text + " " * pad, end="", file=self.out, flush=True)

    def close(self) -> None:
        """End the line (when one was drawn), so what follows starts on its own."""
        if self.enabled and self._drawn is not None:
            print(file=self.out, flush=True)
            self._drawn = None


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False
