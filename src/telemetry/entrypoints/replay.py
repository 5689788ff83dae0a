"""`telemetry replay`: decode a real CAN log with a DBC file and post one reading per frame.

Decoding lives in `telemetry.adapters.canlog`; this module parses the command line, paces the
readings (`--speed`), batches them into requests and prints the summary. `replay()` is the
programmatic entry (tests, the demo); `run()` is the argparse one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import msgspec

from telemetry.adapters.canlog import (
    CanLogError,
    DecodeStats,
    FrameDecoder,
    LogSpan,
    TimeMode,
    check_log,
    parse_id_ranges,
    replay_readings,
    scan_log,
)
from telemetry.adapters.ingest_client import ClientSummary, IngestClient
from telemetry.domain.readings import MAX_VEHICLE_ID, VEHICLE_ID_PATTERN
from telemetry.entrypoints.fleet_client import (
    IngestSender,
    exit_status,
    gave_up,
    keep_error,
    refused,
    start_time,
    stopped_after,
    summary_line,
    vehicle_id_ok,
)
from telemetry.entrypoints.progress import Progress

# Contract default for the ingest's clock-skew check; a start later than this is refused there.
_MAX_SKEW = timedelta(seconds=300)
# With --speed pacing, a partly filled batch waits at most this long before it is sent.
_MAX_BATCH_WAIT = 0.5


@dataclass
class ReplayResult:
    stats: DecodeStats
    summary: ClientSummary
    elapsed: float
    accepted_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    fatal: str | None = None  # the log became unusable mid-way; what was decoded was sent
    stopped: str | None = None  # sending gave up: the service is unreachable or refuses the key


class _Stop(Exception):
    pass


def _bar(span: LogSpan | None) -> Progress:
    """By log time, when the log's span is known."""
    total = span.last - span.first if span and span.last > span.first else None
    return Progress("replay", total, unit="s of log", items_unit="readings", enabled=True)


def _log_seconds(span: LogSpan | None, log_ts: float) -> float:
    return max(0.0, log_ts - span.first) if span else 0.0


def replay(
    *,
    dbc: str | Path,
    log: str | Path,
    vehicle_id: str,
    map_path: str | Path | None = None,
    time_mode: TimeMode = "original",
    speed: float | None = None,
    batch: int = 500,
    url: str = "http://127.0.0.1:8000",
    api_key: str = "",
    raw_choices: bool = False,
    client: IngestSender | None = None,
    dry_run: TextIO | None = None,
    progress: bool = False,
    limit: int | None = None,
    isotp_ids: tuple[tuple[int, int], ...] | None = None,
) -> ReplayResult:
    """Decode `log` and post its readings in requests of `batch`; `speed` None = max.

    `limit` stops after that many readings: the first N of the log, the same N every time.
    `isotp_ids` replaces the default ISO-TP reply ids (the OBD2 ones), as id ranges.

    `client` overrides the HTTP client (and is not closed here); `dry_run` writes the readings
    as NDJSON to that stream instead of sending them. Raises CanLogError for unusable files.
    """
    decoder = FrameDecoder.from_files(dbc, map_path=map_path, raw_choices=raw_choices,
                                      isotp_ids=isotp_ids)
    span = scan_log(log) if time_mode == "now" or progress else None
    if span is None:
        check_log(log)
    own_client = client is None and dry_run is None
    sender: IngestSender | None = IngestClient(url, api_key) if own_client else client
    result = ReplayResult(decoder.stats, ClientSummary(), 0.0)
    bar = _bar(span) if progress else None
    enc = msgspec.json.Encoder()
    pending: list[dict[str, Any]] = []
    pending_since = 0.0
    readings = 0

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        if dry_run is not None:
            for r in pending:
                dry_run.write(enc.encode(r).decode() + "\n")
        elif sender is not None:
            batch_size = len(pending)
            ids = sender.send(pending)
            pending = []
            result.accepted_ids.extend(ids)
            err = getattr(sender, "last_error", None)
            if not ids and batch_size and err is not None:
                keep_error(result.errors, err)
                # Every further request would fail the same way: stop instead of retrying the
                # rest of the log for minutes. A 422 or 413 is about one request: go on.
                if refused(err) or gave_up(err):
                    raise _Stop(stopped_after(err))
        pending = []

    start = time.monotonic()
    t0: float | None = None
    log_ts = 0.0
    try:
        for log_ts, reading in replay_readings(log, decoder, vehicle_id, time_mode, span=span):
            if speed is not None:
                if t0 is None:
                    t0 = log_ts
                delay = start + (log_ts - t0) / speed - time.monotonic()
                if delay > 0:
                    # Paced: do not hold readings back longer than a moment for a full batch.
                    if pending and time.monotonic() - pending_since >= _MAX_BATCH_WAIT:
                        flush()
                    time.sleep(max(0.0, start + (log_ts - t0) / speed - time.monotonic()))
            if not pending:
                pending_since = time.monotonic()
            pending.append(reading)
            readings += 1
            if len(pending) >= batch:
                flush()
            if bar:
                bar.update(_log_seconds(span, log_ts), readings,
                           f"accepted={len(result.accepted_ids)}")
            if limit is not None and readings >= limit:
                break  # before the next frame is read, so the stats end at the Nth reading
        flush()
    except CanLogError as exc:  # unreadable from some frame on, or a relative clock
        result.fatal = str(exc)
        try:
            flush()
        except _Stop as stop:
            result.stopped = str(stop)
    except _Stop as stop:
        result.stopped = str(stop)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if bar:
            done = span is not None and not (result.fatal or result.stopped or result.interrupted
                                             or (limit is not None and readings >= limit))
            end_ts = span.last if done and span else log_ts
            bar.update(_log_seconds(span, end_ts), readings,
                       f"accepted={len(result.accepted_ids)}", force=True)
            bar.close()
        if sender is not None:
            result.summary = sender.summary
            if own_client:
                sender.close()
    result.elapsed = time.monotonic() - start
    return result


# ------------------------------------------------------------------ command line


def _parse_time(value: str) -> TimeMode:
    if value == "original":
        return "original"
    if value == "now":
        return "now"
    return start_time(value, "original, now or an RFC 3339 timestamp with offset")


def _parse_speed(value: str) -> float | None:
    if value == "max":
        return None
    try:
        f = float(value)
    except ValueError:
        f = 0.0
    if not 0 < f < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive factor or max")
    return f


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return n


def _id_ranges(value: str) -> tuple[tuple[int, int], ...]:
    try:
        return parse_id_ranges(value)
    except CanLogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="decode a real CAN log with a DBC file and post its readings",
        description="Decode a CAN log (candump .log, .asc, .blf, .trc, .mf4; .gz too) with a "
        "DBC file (29-bit J1939 ids matched by PGN, J1939 multi-packet messages and ISO-TP "
        "replies reassembled; OBD2 replies decoded by SAE J1979, J1939 DM1 by J1939-73) "
        "and post one reading per decoded message, ts from its last frame. Signals are named "
        "<Message>.<Signal> unless --map renames them. Ends with a summary: frames decoded "
        "and skipped, then sent, accepted, rejected, retries. See docs/replay.md.",
    )
    p.add_argument("--dbc", required=True, help="CAN database (DBC; KCD, SYM, ARXML work too)")
    p.add_argument("--log", required=True, help="CAN log: .log (candump), .asc, .blf, .trc, "
                   ".mf4 (finalized or not), optionally .gz")
    p.add_argument("--vehicle-id", required=True, help="vehicle_id of every reading")
    p.add_argument("--map", dest="map_path", help="YAML or JSON signal map: rename "
                   "<Message>.<Signal> to VSS names, convert units (see maps/)")
    p.add_argument("--time", dest="time_mode", type=_parse_time, default="original",
                   metavar="original|now|RFC3339",
                   help="original: the log's clock (default); now: shift so the log ends now; "
                   "an RFC 3339 instant: shift the first frame to it")
    p.add_argument("--speed", type=_parse_speed, default=None, metavar="FACTOR|max",
                   help="1 paces like the recording, 10 ten times faster; max (default) sends "
                   "as fast as the service takes it")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="ingest base URL")
    p.add_argument("--api-key", default=os.environ.get("TELEMETRY_API_KEY"),
                   help="API key (default: $TELEMETRY_API_KEY)")
    p.add_argument("--batch", type=_positive_int, default=500, help="readings per request")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="send only the first N readings of the log (a deterministic slice)")
    p.add_argument("--isotp-ids", type=_id_ranges, metavar="IDS",
                   help="ISO-TP reply ids to reassemble, as 0x7E8-0x7EF,0x7BB (default: the "
                   "OBD2 replies 0x7E8-0x7EF and 0x18DAF100-0x18DAF1FF; none: only the DBC's "
                   "messages longer than 8 bytes)")
    p.add_argument("--raw-choices", action="store_true",
                   help="send DBC choice values as numbers instead of their labels")
    p.add_argument("--dry-run", action="store_true",
                   help="print the readings as NDJSON on stdout instead of sending them "
                   "(the summary goes to stderr)")
    p.set_defaults(func=run)


def format_stats(s: DecodeStats) -> list[str]:
    lines = [
        f"frames={s.frames} decoded={s.decoded} readings={s.readings} obd2={s.obd2} "
        f"dm1={s.dm1} unknown={s.unknown} decode_errors={s.decode_errors} "
        f"obd2_unsupported={s.obd2_unsupported} no_signals={s.no_signals} "
        f"non_data={s.non_data} bad_ts={s.bad_ts}",
        f"transport_frames={s.transport_frames} reassembled={s.reassembled} "
        f"transfers_dropped={s.transfers_dropped.total()} stray_frames={s.stray_frames}",
    ]
    if s.transfers_dropped:
        lines.append("transfers dropped: " + ", ".join(
            f"{k}={n}" for k, n in sorted(s.transfers_dropped.items())))
    if s.unknown_ids:
        top = ", ".join(f"{k} x{n}" for k, n in s.unknown_ids.most_common(5))
        more = len(s.unknown_ids) - 5
        lines.append(f"unknown ids: {top}" + (f" (+{more} more ids)" if more > 0 else ""))
    for name, n in s.errors_by_message.most_common(5):
        lines.append(f"decode errors: {name} x{n}: {s.first_error.get(name, '')}")
    if s.dropped:
        lines.append("values dropped: " + ", ".join(f"{k}={n}" for k, n in s.dropped.items()))
    return lines


def run(args: argparse.Namespace) -> int:
    err = sys.stderr
    dry_run = bool(getattr(args, "dry_run", False))
    vid = args.vehicle_id
    if not vehicle_id_ok(vid):
        print(f"telemetry replay: --vehicle-id {vid!r} must match {VEHICLE_ID_PATTERN}, "
              f"1-{MAX_VEHICLE_ID} chars", file=err)
        return 2
    if not dry_run and not args.api_key:
        print("telemetry replay: --api-key or TELEMETRY_API_KEY is required", file=err)
        return 2
    if isinstance(args.time_mode, datetime) and args.time_mode > datetime.now(UTC) + _MAX_SKEW:
        print("telemetry replay: warning: --time is in the future; the service refuses readings "
              "more than its clock skew (default 300 s) ahead", file=err)
    try:
        r = replay(
            dbc=args.dbc, log=args.log, vehicle_id=vid, map_path=args.map_path,
            time_mode=args.time_mode, speed=args.speed, batch=args.batch, url=args.url,
            api_key=args.api_key or "", raw_choices=bool(getattr(args, "raw_choices", False)),
            dry_run=sys.stdout if dry_run else None, progress=err.isatty(),
            limit=getattr(args, "limit", None), isotp_ids=getattr(args, "isotp_ids", None),
        )
    except CanLogError as exc:
        print(f"telemetry replay: {exc}", file=err)
        return 2
    out = err if dry_run else sys.stdout
    for line in format_stats(r.stats):
        print(line, file=out)
    for e in r.errors:
        print(f"error: {e}", file=err)
    if r.fatal:
        print(f"telemetry replay: {r.fatal}", file=err)
    if r.stopped:
        print(f"telemetry replay: {r.stopped}", file=err)
    s = r.summary
    print(summary_line(s, r.elapsed), file=out)
    if r.fatal:
        return 2
    return exit_status(s, stopped=r.stopped, interrupted=r.interrupted)
