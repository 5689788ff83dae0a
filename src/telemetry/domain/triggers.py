"""ADR 0001's triggers to revisit the transport: the thresholds, in one place, and the rule.

`telemetry triggers` measures, `evaluate` decides. A trigger without a measurement (no worker has
published yet, nothing aggregated) does not fire: it says so instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The thresholds of ADR 0001 ("Triggers to revisit"). Each is a setting too
# (TELEMETRY_TRIGGER_*), so an operator or a test can move it; these are the defaults.
SEND_RATE_PER_S = 3000.0
"""Sustained SQS SendMessageBatch calls per second."""
DUPLICATE_RATE = 0.01
"""Raw lines beyond the distinct readings, as a share of the distinct readings."""
OLDEST_AGE_S = 300.0
"""Age of the oldest message in the queue, seconds."""
LATENCY_MARGIN_S = 5.0
"""p99 of received -> stored may exceed the batch max age by this much, seconds."""
WINDOW_S = 900.0
"""What 'sustained' and 'steady state' mean: the window the rates and p99 are measured over."""
DUPLICATE_HOURS = 24
"""The event-time hours (the latest aggregated) the duplicate rate is measured over."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    send_rate_per_s: float = SEND_RATE_PER_S
    duplicate_rate: float = DUPLICATE_RATE
    oldest_age_s: float = OLDEST_AGE_S
    latency_margin_s: float = LATENCY_MARGIN_S
    window_s: float = WINDOW_S
    duplicate_hours: int = DUPLICATE_HOURS


@dataclass(frozen=True, slots=True)
class Measured:
    """A value and where it comes from; `value` None when there is nothing to measure yet."""

    value: float | None
    source: str
    window: str


@dataclass(frozen=True, slots=True)
class Measurements:
    send_rate_per_s: Measured
    duplicate_rate: Measured
    oldest_age_s: Measured
    p99_received_to_stored_s: Measured
    batch_max_age_s: float


@dataclass(frozen=True, slots=True)
class TriggerResult:
    name: str
    threshold: float
    threshold_text: str
    measured: Measured
    value_text: str
    fires: bool
    advice: str


def _fmt_s(v: float) -> str:
    return f"{v:,.1f} s" if v < 120 else f"{v / 60:,.1f} min"


def _fmt_rate(v: float) -> str:
    return f"{v:,.1f} /s"


def _fmt_share(v: float) -> str:
    return f"{v:.2%}"


def evaluate(m: Measurements, t: Thresholds) -> list[TriggerResult]:
    latency_limit = m.batch_max_age_s + t.latency_margin_s
    rows: list[tuple[str, float, str, Measured, Callable[[float], str], str]] = [
        ("send_rate", t.send_rate_per_s, f"{t.send_rate_per_s:,.0f} /s", m.send_rate_per_s,
         _fmt_rate,
         "consider Kinesis or MSK"),
        ("duplicate_rate", t.duplicate_rate, f"{t.duplicate_rate:.2%}", m.duplicate_rate,
         _fmt_share,
         "look at worker crash frequency and the visibility timeout first"),
        ("oldest_message_age", t.oldest_age_s, _fmt_s(t.oldest_age_s), m.oldest_age_s, _fmt_s,
         "add workers; if that does not help, revisit the batch policy"),
        ("p99_received_to_stored", latency_limit,
         f"{_fmt_s(latency_limit)} (batch max age {m.batch_max_age_s:g} s "
         f"+ {t.latency_margin_s:g} s)",
         m.p99_received_to_stored_s, _fmt_s,
         "the queue, not batching, is the bottleneck"),
    ]
    out: list[TriggerResult] = []
    for name, limit, limit_text, measured, fmt, advice in rows:
        v = measured.value
        out.append(TriggerResult(
            name, limit, limit_text, measured, "no data" if v is None else fmt(v),
            v is not None and v > limit, advice,
        ))
    return out


def duplicate_rate(raw: int, distinct: int) -> float | None:
    """Raw lines beyond the distinct readings, per distinct reading; None with no readings."""
    if distinct <= 0:
        return None
    return max(0, raw - distinct) / distinct
