"""`telemetry triggers`: ADR 0001's upgrade triggers, measured from production sources.

- send rate: messages the workers received for the first time, per second over the window,
  from the state they publish to the lake (`_state/workers/`); each SendMessageBatch call
  carries at least one message, so this bounds the call rate from above.
- duplicate rate: raw lines against distinct readings, as aggregation recorded them per hour
  (`aggregates/_state/hourly.json`), over the latest hours.
- oldest message age: the queue itself where it can tell (SQLite); on SQS, which publishes it
  to CloudWatch only, the longest a message had waited when a worker last received some, or,
  while messages wait and no worker has published, the time since a worker last did.
- p99 received -> stored: the workers' latency distributions over the window, merged.

Exit status: 0 none fires, 1 at least one fires, 2 bad configuration, 3 the queue or the lake
did not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry.domain.errors import NotFound, QueueUnavailable, StorageUnavailable
from telemetry.domain.ports.depth import QueueDepth, QueueDepthProbe
from telemetry.domain.ports.storage import Storage
from telemetry.domain.triggers import (
    Measured,
    Measurements,
    Thresholds,
    TriggerResult,
    duplicate_rate,
    evaluate,
)
from telemetry.domain.worker_state import STATE_PREFIX, Window, WorkerState, format_time, window
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.settings import Settings, load_settings

EXIT_FIRES = 1
EXIT_UNREACHABLE = 3


def worker_states(storage: Storage) -> list[WorkerState]:
    """Every worker state published to the lake; one that cannot be read is passed over."""
    out: list[WorkerState] = []
    for key in storage.list(STATE_PREFIX):
        try:
            out.append(WorkerState.decode(storage.get(key)))
        except (ValueError, NotFound):
            continue
    return out


@dataclass(frozen=True, slots=True)
class Report:
    at: float
    results: list[TriggerResult]
    window: Window
    depth: QueueDepth | None
    # What was read to measure, for a caller that shows more of it (`telemetry report`).
    states: list[WorkerState] = field(default_factory=list)
    counts: dict[datetime, tuple[int, int]] = field(default_factory=dict)  # hour: raw, distinct

    @property
    def fires(self) -> bool:
        return any(r.fires for r in self.results)


def measure(container: Container, settings: Settings, now: float | None = None) -> Report:
    """Raises QueueUnavailable or StorageUnavailable when a source does not answer."""
    now = time.time() if now is None else now
    t = settings.thresholds
    storage = container.storage()
    queue = container.queue()
    depth = queue.depth() if isinstance(queue, QueueDepthProbe) else None
    states = worker_states(storage)
    counts = container.aggregate_hours().counts()
    w = window(states, now, t.window_s)
    span = f"last {_span(t.window_s)}"
    by = f"{w.workers} worker(s)"

    send = Measured(w.totals.sends / w.seconds if w.workers else None,
                    f"first receives seen by {by} (>= SendMessageBatch calls)", span)
    dup = _duplicates(counts, t, now)
    oldest = _oldest(depth, w, now)
    dist = w.totals.received_to_stored
    p99 = Measured(dist.percentile(99) / 1000 if dist.count else None,
                   f"{dist.count:,} readings stored by {by}", span)
    m = Measurements(send, dup, oldest, p99, settings.batch_max_age)
    return Report(now, evaluate(m, t), w, depth, states, counts)


def _span(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def duplicate_counts(counts: dict[datetime, tuple[int, int]], t: Thresholds,
                     now: float) -> tuple[int, int, int]:
    """(raw lines, distinct readings, hours) of the hours the duplicate rate is measured over."""
    since = datetime.fromtimestamp(now, UTC) - timedelta(hours=t.duplicate_hours)
    recent = [c for h, c in counts.items() if h >= since]
    return sum(c[0] for c in recent), sum(c[1] for c in recent), len(recent)


def _duplicates(counts: dict[datetime, tuple[int, int]], t: Thresholds, now: float) -> Measured:
    raw, distinct, hours = duplicate_counts(counts, t, now)
    return Measured(duplicate_rate(raw, distinct),
                    f"aggregation: {raw:,} raw lines, {distinct:,} distinct readings in "
                    f"{hours} hour(s)", f"event-time hours of the last {t.duplicate_hours} h")


def _oldest(depth: QueueDepth | None, w: Window, now: float) -> Measured:
    if depth is not None and depth.oldest_age_s is not None:
        return Measured(depth.oldest_age_s, f"the queue: {depth.visible:,} visible, "
                        f"{depth.in_flight:,} in flight", "now")
    waiting = depth.visible if depth is not None else 0
    values: list[float] = []
    sources: list[str] = []
    if w.latest_oldest_age_ms is not None and w.latest_receive is not None:
        values.append(w.latest_oldest_age_ms / 1000)
        sources.append("the oldest message workers received at "
                       + format_time(w.latest_receive))
    if waiting:
        if w.last_update is None:
            return Measured(None, f"{waiting:,} message(s) wait; no worker has published "
                            "what it received", "now")
        values.append(now - w.last_update)
        sources.append(f"time since a worker last published, while {waiting:,} message(s) "
                       "wait")
    if not values:
        return Measured(None, "no receive by any worker within the window", "latest receive")
    return Measured(max(values), "; ".join(sources), "latest receive")


def render(report: Report) -> list[str]:
    rows = [("trigger", "threshold", "value", "window", "fires", "measured from")]
    for r in report.results:
        rows.append((r.name, r.threshold_text, r.value_text, r.measured.window,
                     "FIRES" if r.fires else "no", r.measured.source))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [f"ADR 0001 triggers at {format_time(report.at)}"]
    for row in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:5])) + "  " + row[5])
    for r in report.results:
        if r.fires:
            lines.append(f"{r.name} fires: {r.advice}")
    return lines


def as_json(report: Report) -> dict[str, Any]:
    return {
        "at": format_time(report.at),
        "fires": report.fires,
        "triggers": [
            {"name": r.name, "threshold": r.threshold, "threshold_text": r.threshold_text,
             "value": r.measured.value, "value_text": r.value_text, "window": r.measured.window,
             "source": r.measured.source, "fires": r.fires, "advice": r.advice}
            for r in report.results
        ],
    }


def cmd_triggers(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        report = measure(create_container(settings), settings)
    except (QueueUnavailable, StorageUnavailable) as exc:
        print(f"telemetry triggers: cannot measure, a source did not answer: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(as_json(report)))
    else:
        print("\n".join(render(report)))
    return EXIT_FIRES if report.fires else 0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "triggers", help="ADR 0001's upgrade triggers: measured now, firing or not",
        description="Measure each trigger of ADR 0001 (send rate, duplicate rate, oldest "
        "message age, p99 received -> stored) from the queue and the lake, and compare it with "
        "its threshold (TELEMETRY_TRIGGER_*). Exit 0 when none fires, 1 when one fires, 2 on "
        "bad configuration, 3 when the queue or the lake does not answer.")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_triggers)
