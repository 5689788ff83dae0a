"""`telemetry report`: one self-contained HTML file about the pipeline, from the lake.

Everything is inline (SVG charts drawn here, a few lines of CSS and script), so the file opens
anywhere with no network. What it shows, and where each comes from:
- received -> stored and ts -> stored distributions, and throughput over time: the state the
  workers publish (`_state/workers/`), over the trigger window;
- readings per vehicle for an hour: that hour's aggregate (the latest aggregated, or `--hour`);
- duplicates per hour: aggregation's raw lines against distinct readings;
- ADR 0001's triggers: `telemetry triggers`' table;
- with `--vehicle` (the demo's replayed car), its signals over time and its GNSS track, from
  the raw files: whichever of `KNOWN_SIGNALS` it has.

The page's script checks that every chart it announces is there and marks `<body>` with
`data-rendered="ok"`; a script error lands in `data-errors`. Browsers in tests read both.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from telemetry.adapters.private_files import make_private_dirs, open_private
from telemetry.domain import lake
from telemetry.domain.aggregation import decode_aggregate_lines
from telemetry.domain.errors import NotFound, QueueUnavailable, StorageUnavailable
from telemetry.domain.hour_slices import read_raw
from telemetry.domain.latency import LatencyDistribution
from telemetry.domain.ports.storage import Storage
from telemetry.domain.readings import Record
from telemetry.domain.triggers import Thresholds, TriggerResult, duplicate_rate
from telemetry.domain.worker_state import format_time
from telemetry.entrypoints import triggers as triggers_cmd
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.settings import Settings, load_settings

# VSS signals drawn over time when the vehicle has them, with their units.
KNOWN_SIGNALS: tuple[tuple[str, str], ...] = (
    ("Vehicle.Speed", "km/h"),
    ("Vehicle.Powertrain.CombustionEngine.Speed", "rpm"),
    ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "%"),
    ("Vehicle.Powertrain.TractionBattery.CurrentPower", "W"),
    ("Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature", "°C"),
)
LATITUDE, LONGITUDE = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
# Latency histogram bars, seconds (upper bounds).
LATENCY_BARS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
                86400.0)
MAX_POINTS = 1500  # per series: a browser draws a day of 1 Hz data, thinned, at once
MAX_VEHICLES = 40
MAX_RAW_FILES = 2000  # raw files read for per-second throughput and signals; past it, skipped


@dataclass
class ReportInput:
    title: str
    generated_at: float
    window_s: float
    workers: int
    received_to_stored: LatencyDistribution
    ts_to_stored: LatencyDistribution
    throughput: list[tuple[float, int]]  # (slot start, epoch s; readings stored in it)
    slot_seconds: float
    accepted_per_s: list[tuple[float, int]]  # (second; distinct readings ingest accepted)
    hour: datetime | None
    vehicles: list[tuple[str, int]]  # readings per vehicle in `hour`, most first
    duplicates: list[tuple[datetime, int, int]]  # hour, raw lines, distinct readings
    triggers: list[TriggerResult]
    vehicle: str | None = None
    # A firing trigger the caller caused on purpose (the demo's re-sends): name -> why.
    expected: dict[str, str] = field(default_factory=dict)
    signals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    track: list[tuple[float, float]] = field(default_factory=list)  # (latitude, longitude)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- gathering


def latest_hour(storage: Storage) -> datetime | None:
    hours = [h for k in storage.list(lake.AGGREGATES) if (h := lake.hour_of_key(k)) is not None]
    return max(hours, default=None)


def vehicles_of_hour(storage: Storage, hour: datetime) -> list[tuple[str, int]]:
    try:
        data = storage.get(lake.aggregate_key(hour))
    except NotFound:
        return []
    rows = [(line.vehicle_id, line.readings) for line in decode_aggregate_lines(data)]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


_record_decoder = msgspec.json.Decoder(Record)


@dataclass
class RawScan:
    """One pass over the raw files of some hours: readings accepted per second (by
    `received_at`, each identity once), and one vehicle's readings in time order."""

    accepted_per_s: dict[int, int] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    files: int = 0
    skipped_hours: list[datetime] = field(default_factory=list)


def scan_raw(storage: Storage, hours: Iterable[datetime], vehicle: str | None,
             max_files: int = MAX_RAW_FILES) -> RawScan:
    out = RawScan()
    seen: set[tuple[str, str]] = set()
    mine: dict[str, Record] = {}
    for hour in sorted(set(hours)):
        keys = [k for k in storage.list(lake.raw_prefix(hour)) if lake.is_raw_file(k)]
        if out.files + len(keys) > max_files:
            out.skipped_hours.append(hour)
            continue
        out.files += len(keys)
        for key in keys:
            for r in _record_decoder.decode_lines(read_raw(storage, key)):
                ident = (r.vehicle_id, r.reading_id)
                if ident in seen:
                    continue
                seen.add(ident)
                sec = int(r.received_at.timestamp())
                out.accepted_per_s[sec] = out.accepted_per_s.get(sec, 0) + 1
                if r.vehicle_id == vehicle:
                    mine[r.reading_id] = r
    out.records = sorted(mine.values(), key=lambda r: r.ts)
    return out


def signals_of(records: Sequence[Record]) -> tuple[dict[str, list[tuple[float, float]]],
                                                   list[tuple[float, float]]]:
    """Known signals over time, and the track: a point whenever latitude or longitude changes
    and both are known (a GNSS message may carry them in separate readings)."""
    series: dict[str, list[tuple[float, float]]] = {}
    known = {name for name, _ in KNOWN_SIGNALS}
    track: list[tuple[float, float]] = []
    lat: float | None = None
    lon: float | None = None
    for r in records:
        t = r.ts.timestamp()
        for name, v in r.signals.items():
            if name in known and _number(v):
                series.setdefault(name, []).append((t, float(v)))
        moved = False
        la, lo = _coordinate(r.signals.get(LATITUDE), 90), _coordinate(r.signals.get(LONGITUDE),
                                                                        180)
        if la is not None:
            lat, moved = la, True
        if lo is not None:
            lon, moved = lo, True
        if moved and lat is not None and lon is not None and not (lat == 0 and lon == 0):
            track.append((lat, lon))
    return series, track


def _coordinate(v: object, limit: float) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and -limit <= v <= limit:
        return float(v)
    return None


def _number(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]


def gather(container: Container, settings: Settings, *, hour: datetime | None = None,
           vehicle: str | None = None, signal_hours: Sequence[datetime] = (),
           title: str = "Fleet telemetry report", now: float | None = None,
           resent_on_purpose: int = 0) -> ReportInput:
    """`resent_on_purpose`: readings the caller sent twice deliberately (the demo's simulated
    lost responses). When the duplicate rate fires only because of them, the page says so."""
    now = time.time() if now is None else now
    storage = container.storage()
    # The worker states and aggregation's counts the triggers were measured from, read once.
    tr = triggers_cmd.measure(container, settings, now)
    w = tr.window
    slot = min((s.slot_seconds for s in tr.states), default=1.0)
    per_slot: dict[float, int] = {}
    for s in tr.states:
        for t, sl in s.slots.items():
            if t + s.slot_seconds > w.start:
                per_slot[float(t)] = per_slot.get(float(t), 0) + sl.readings
    if hour is None:
        hour = latest_hour(storage)
    dups = sorted((h, c[0], c[1]) for h, c in tr.counts.items())[-48:]
    hours = list(signal_hours) or ([hour] if hour is not None else [])
    raw = scan_raw(storage, hours, vehicle)
    out = ReportInput(
        title, now, w.seconds, w.workers, w.totals.received_to_stored, w.totals.ts_to_stored,
        sorted(per_slot.items()), slot,
        sorted((float(t), n) for t, n in raw.accepted_per_s.items()), hour,
        vehicles_of_hour(storage, hour) if hour is not None else [], dups, tr.results,
    )
    why = _deliberate_duplicates(tr, settings.thresholds, resent_on_purpose)
    if why:
        out.expected["duplicate_rate"] = why
    if not w.workers:
        out.notes.append(f"No worker published its state within the last {w.seconds:g} s: "
                         "the latency charts and the stored throughput are empty.")
    for h in raw.skipped_hours:
        out.notes.append(f"Hour {h:%Y-%m-%dT%H}Z has too many raw files to read here: its "
                         "accepted throughput and signals are left out.")
    if vehicle:
        out.vehicle = vehicle
        out.signals, out.track = signals_of(raw.records)
    return out


def _deliberate_duplicates(tr: triggers_cmd.Report, t: Thresholds, resent: int) -> str | None:
    """Why the duplicate rate fires as intended, when the `resent` readings sent twice on
    purpose account for it: without them it would stay within its threshold."""
    fired = [r for r in tr.results if r.name == "duplicate_rate" and r.fires]
    if not resent or not fired:
        return None
    raw, distinct, _ = triggers_cmd.duplicate_counts(tr.counts, t, tr.at)
    rest = duplicate_rate(raw - resent, distinct)
    if rest is None or rest > fired[0].threshold:
        return None
    return (f"expected here: {resent:,} readings were sent twice on purpose, as by a client "
            "whose response got lost, to show that the lake's readers count each reading "
            f"once; without them the rate is {rest:.2%}")


# ---------------------------------------------------------------- drawing

W, H = 680, 260
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 44
COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:,.0f}" if a >= 100 else f"{v:.3g}"


def _frame(chart: str, title: str, body: str, y_max: float, y_label: str,
           y_min: float = 0.0) -> str:
    """Axes from `y_min` to `y_min + y_max` (the span)."""
    plot_h = H - PAD_T - PAD_B
    ticks = []
    for i in range(5):
        v = y_min + y_max * i / 4
        y = PAD_T + plot_h - plot_h * i / 4
        ticks.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{PAD_L - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_e(_fmt(v))}</text>')
    return (f'<figure class="chart" data-chart="{_e(chart)}"><figcaption>{_e(title)}'
            f'</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{_e(title)}">{"".join(ticks)}'
            f'<text x="14" y="{PAD_T + plot_h / 2:.0f}" transform="rotate(-90 14 '
            f'{PAD_T + plot_h / 2:.0f})" text-anchor="middle">{_e(y_label)}</text>'
            f'{body}</svg></figure>')


def bars(chart: str, title: str, labels: Sequence[str], values: Sequence[float],
         y_label: str, color: str = COLORS[0], tips: Sequence[str] | None = None) -> str:
    if not values:
        return _empty(chart, title)
    y_max = _nice(max(values))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = plot_w / len(values)
    every = max(1, math.ceil(len(values) / 16))
    parts = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * v / y_max
        x = PAD_L + i * step
        tip = tips[i] if tips else f"{label}: {v:,g}"
        parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{PAD_T + plot_h - h:.1f}" '
                     f'width="{step * 0.8:.1f}" height="{h:.1f}" fill="{color}">'
                     f'<title>{_e(tip)}</title></rect>')
        if len(values) <= 24:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{PAD_T + plot_h - h - 4:.1f}" '
                         f'text-anchor="middle">{_e(_fmt(v))}</text>')
        if i % every == 0:
            lx, ly = x + step / 2, H - PAD_B + 14
            anchor = "end" if len(values) > 8 else "middle"
            rot = f' transform="rotate(-30 {lx:.1f} {ly})"' if len(values) > 8 else ""
            parts.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="{anchor}"{rot}>'
                         f'{_e(label)}</text>')
    return _frame(chart, title, "".join(parts), y_max, y_label)


def _thin(points: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    return [points[int(i * step)] for i in range(MAX_POINTS)] + [points[-1]]


def lines(chart: str, title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
          y_label: str) -> str:
    pts = [p for _, s in series for p in s]
    if not pts:
        return _empty(chart, title)
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    hi = max(p[1] for p in pts)
    lo = min(0.0, *(p[1] for p in pts))
    y_max = _nice(hi - lo) if hi > lo else 1.0
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    span = (t1 - t0) or 1.0

    def xy(p: tuple[float, float]) -> str:
        return (f"{PAD_L + plot_w * (p[0] - t0) / span:.1f},"
                f"{PAD_T + plot_h - plot_h * (p[1] - lo) / y_max:.1f}")

    parts = []
    for i, (name, s) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if len(s) == 1:  # a line of one point draws nothing
            cx, cy = xy(s[0]).split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="4" fill="{color}"><title>'
                         f'{_e(name)}: {s[0][1]:,.4g}</title></circle>')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{" ".join(xy(p) for p in _thin(s))}"><title>{_e(name)}</title>'
                     f'</polyline>')
        if len(series) > 1:
            parts.append(f'<text x="{W - PAD_R - 4}" y="{PAD_T + 14 + 14 * i}" '
                         f'text-anchor="end" style="fill:{color};font-weight:600">{_e(name)}'
                         '</text>')
    for frac in (0.0, 0.5, 1.0):
        t = t0 + span * frac
        anchor = ("start", "middle", "end")[int(frac * 2)]
        parts.append(f'<text x="{PAD_L + plot_w * frac:.1f}" y="{H - PAD_B + 16}" '
                     f'text-anchor="{anchor}">{datetime.fromtimestamp(t, UTC):%H:%M:%S}Z</text>')
    return _frame(chart, title, "".join(parts), y_max, y_label, lo)


def track(chart: str, title: str, points: Sequence[tuple[float, float]]) -> str:
    if len(points) < 2:
        return _empty(chart, title)
    pts = _thin(points)
    lat0 = math.radians(sum(p[0] for p in pts) / len(pts))
    xs = [p[1] * math.cos(lat0) for p in pts]
    ys = [p[0] for p in pts]
    size = 420
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1e-6
    pad = 16

    def xy(x: float, y: float) -> str:
        return (f"{pad + (size - 2 * pad) * (x - min(xs)) / span:.1f},"
                f"{size - pad - (size - 2 * pad) * (y - min(ys)) / span:.1f}")

    path = " ".join(xy(x, y) for x, y in zip(xs, ys, strict=True))
    start, end = xy(xs[0], ys[0]).split(","), xy(xs[-1], ys[-1]).split(",")
    km = span * 111.32
    body = (f'<rect x="0" y="0" width="{size}" height="{size}" class="map"/>'
            f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="2" points="{path}"/>'
            f'<circle cx="{start[0]}" cy="{start[1]}" r="5" fill="{COLORS[2]}"><title>start'
            f'</title></circle><circle cx="{end[0]}" cy="{end[1]}" r="5" fill="{COLORS[1]}">'
            f'<title>end</title></circle>'
            f'<text x="{pad}" y="{size - 4}">{km:.2f} km across; {len(points):,} fixes</text>')
    return (f'<figure class="chart" data-chart="{_e(chart)}"><figcaption>{_e(title)}'
            f'</figcaption><svg viewBox="0 0 {size} {size}" width="{size}" height="{size}" '
            f'role="img" aria-label="{_e(title)}">{body}</svg></figure>')


def _empty(chart: str, title: str) -> str:
    return (f'<figure class="chart" data-chart="{_e(chart)}"><figcaption>{_e(title)}'
            f'</figcaption><svg viewBox="0 0 {W} 60" width="{W}" height="60" role="img">'
            f'<text x="{W / 2}" y="34" text-anchor="middle">no data</text></svg></figure>')


def latency_chart(chart: str, title: str, d: LatencyDistribution) -> str:
    counts = []
    below = 0
    for b in LATENCY_BARS:
        n = d.count_below(b * 1000)
        counts.append(n - below)
        below = n
    counts.append(d.count - below)
    labels = [f"≤{_fmt(b)} s" for b in LATENCY_BARS] + [f">{_fmt(LATENCY_BARS[-1])} s"]
    while len(counts) > 1 and counts[-1] == 0:  # no empty tail of long latencies
        counts.pop()
        labels.pop()
    s = d.summary()
    stats = (f"p50 {s['p50_ms'] / 1000:.2f} s · p95 {s['p95_ms'] / 1000:.2f} s · "
             f"p99 {s['p99_ms'] / 1000:.2f} s · max {s['max_ms'] / 1000:.2f} s · "
             f"{d.count:,} readings")
    if d.count == 0:
        return _empty(chart, title)
    return bars(chart, f"{title}: {stats}", labels, counts, "readings")


# ---------------------------------------------------------------- the page

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1500px;color:#111827;background:#f9fafb;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#6b7280}.grid2{display:flex;flex-wrap:wrap;gap:16px}
figure.chart{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:0;padding:8px}
figcaption{font-weight:600;margin:0 0 4px}
svg text{font-size:11px;fill:#374151}svg .grid{stroke:#e5e7eb}svg .map{fill:#f0f9ff}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #e5e7eb;padding:4px 8px;
text-align:left}tr.fires td{background:#fee2e2}tr.expected td{background:#fef3c7}
.note{color:#92400e}
"""

_SCRIPT = """
window.addEventListener("error", function (e) {
  var b = document.body, prev = b ? b.getAttribute("data-errors") : null;
  if (b) b.setAttribute("data-errors", (prev ? prev + " | " : "") + e.message);
});
document.addEventListener("DOMContentLoaded", function () {
  var want = JSON.parse(document.body.getAttribute("data-charts"));
  var missing = want.filter(function (n) {
    return !document.querySelector('figure[data-chart="' + n + '"] svg');
  });
  document.body.setAttribute("data-rendered", missing.length ? "missing " + missing : "ok");
});
"""


def render(r: ReportInput) -> str:
    charts: list[str] = []
    sections: list[str] = []

    def add(html_: str, name: str) -> str:
        charts.append(name)
        return html_

    latency = (add(latency_chart("received_to_stored", "received → stored",
                                 r.received_to_stored), "received_to_stored")
               + add(latency_chart("ts_to_stored", "ts → stored", r.ts_to_stored),
                     "ts_to_stored"))
    sections.append(f"<h2>Latency, last {r.window_s:g} s ({r.workers} worker(s))</h2>"
                    f'<div class="grid2">{latency}</div>')
    rate = [(t, n / r.slot_seconds) for t, n in r.throughput]
    sections.append('<h2>Throughput</h2><div class="grid2">' + add(
        lines("throughput", "readings per second: accepted by ingest (each reading once, by "
              f"received_at) and stored by the workers ({r.slot_seconds:g} s slots)",
              [("accepted", _filled(r.accepted_per_s)), ("stored", rate)], "readings/s"),
        "throughput") + "</div>")
    hour_text = f"{r.hour:%Y-%m-%dT%H}Z" if r.hour else "no hour aggregated yet"
    shown = r.vehicles[:MAX_VEHICLES]
    more = len(r.vehicles) - len(shown)
    sections.append(f"<h2>Readings per vehicle, hour {_e(hour_text)} · duplicates</h2>"
                    '<div class="grid2">' + add(bars(
        "vehicles", f"{len(r.vehicles):,} vehicles, {sum(n for _, n in r.vehicles):,} distinct "
        f"readings" + (f" (the {len(shown)} busiest shown)" if more else ""),
        [v for v, _ in shown], [n for _, n in shown], "readings", COLORS[2]), "vehicles"))
    labels, values, tips = _duplicate_bars(r.duplicates)
    sections[-1] += add(bars(
        "duplicates", "duplicates: raw lines beyond distinct readings, % per hour",
        labels, values, "% duplicates", COLORS[3], tips), "duplicates") + "</div>"
    sections.append("<h2>ADR 0001 triggers</h2>" + _triggers_table(r.triggers, r.expected))
    if r.vehicle is not None:
        units = dict(KNOWN_SIGNALS)
        signal_charts = "".join(
            add(lines(f"signal:{name}", f"{name} ({units[name]})", [(name, r.signals[name])],
                      units[name]), f"signal:{name}")
            for name, _ in KNOWN_SIGNALS if name in r.signals)
        signal_charts += add(track("track", "GNSS track (latitude, longitude)", r.track),
                             "track")
        sections.append(f"<h2>Signals of {_e(r.vehicle)}</h2>"
                        f'<div class="grid2">{signal_charts}</div>')
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in r.notes)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(r.title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body data-charts='{_e(json.dumps(charts))}'><h1>{_e(r.title)}</h1>"
        f'<p class="meta">generated {format_time(r.generated_at)}</p>{notes}'
        + "".join(sections) + "</body></html>\n"
    )


def _duplicate_bars(rows: Sequence[tuple[datetime, int, int]]
                    ) -> tuple[list[str], list[float], list[str]]:
    labels = [f"{h:%m-%d %H}h" for h, _, _ in rows]
    values = [100 * max(0, raw - d) / d if d else 0.0 for _, raw, d in rows]
    tips = [f"{h:%Y-%m-%dT%H}Z: {raw:,} raw lines, {d:,} distinct readings" for h, raw, d in rows]
    return labels, values, tips


def _filled(per_s: Sequence[tuple[float, int]]) -> list[tuple[float, float]]:
    """Seconds without a reading drawn as 0, not bridged by the line."""
    if not per_s:
        return []
    have = dict(per_s)
    first, last = int(per_s[0][0]), int(per_s[-1][0])
    if last - first > 4 * MAX_POINTS:
        return [(t, float(n)) for t, n in per_s]
    return [(float(t), float(have.get(t, 0))) for t in range(first, last + 1)]


def _triggers_table(rows: Sequence[TriggerResult], expected: dict[str, str]) -> str:
    head = ("<table><tr><th>trigger</th><th>threshold</th><th>value</th><th>window</th>"
            "<th>fires</th><th>measured from</th></tr>")
    body = "".join(
        f'<tr class="{_fires_class(t, expected)}"><td>{_e(t.name)}</td>'
        f"<td>{_e(t.threshold_text)}</td><td>{_e(t.value_text)}</td>"
        f"<td>{_e(t.measured.window)}</td><td>{_fires_text(t, expected)}"
        f"</td><td>{_e(t.measured.source)}</td></tr>" for t in rows)
    return head + body + "</table>"


def _fires_class(t: TriggerResult, expected: dict[str, str]) -> str:
    if not t.fires:
        return ""
    return "expected" if t.name in expected else "fires"


def _fires_text(t: TriggerResult, expected: dict[str, str]) -> str:
    if not t.fires:
        return "no"
    if t.name in expected:
        return "FIRES, " + _e(expected[t.name])
    return "FIRES: " + _e(t.advice)


def write(path: Path, report: ReportInput) -> Path:
    """The report, 0600 like every file of the pipeline: it shows where vehicles drove."""
    make_private_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(render(report))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- command line


def cmd_report(args: argparse.Namespace) -> int:
    settings = load_settings()
    hour = None
    if args.hour:
        try:
            hour = lake.parse_hour(args.hour)
        except ValueError:
            print(f"telemetry report: --hour {args.hour!r}: expected 2026-11-29T01",
                  file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else settings.data_dir / "report.html"
    try:
        data = gather(create_container(settings), settings, hour=hour, vehicle=args.vehicle)
        path = write(out, data)
    except (QueueUnavailable, StorageUnavailable) as exc:
        print(f"telemetry report: a source did not answer: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"telemetry report: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="write one self-contained HTML report of the pipeline",
        description="Write one HTML file (no network needed to view it): latency "
        "distributions and throughput from the workers' published state, readings per vehicle "
        "for an hour, duplicates per hour, ADR 0001's triggers, and with --vehicle that "
        "vehicle's signals and GNSS track. Prints the file's path.")
    p.add_argument("--out", help="the file to write (default: $TELEMETRY_DATA_DIR/report.html)")
    p.add_argument("--hour", help="the hour of the per-vehicle chart, e.g. 2026-11-29T01 "
                   "(default: the latest aggregated)")
    p.add_argument("--vehicle", help="draw this vehicle's signals over the hour, and its track")
    p.set_defaults(func=cmd_report)
