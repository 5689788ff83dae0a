"""Cost: SQS requests and S3 PUTs per million readings at the default policy, counted at the
adapters (`SqsQueue`, `S3Storage`) under moto's `mock_aws`.

    python -m bench.bench_cost                 # 200,000 readings in 100-reading requests

Ingest (`AcceptReadings.execute`, one request = one call) fills the queue while the worker
(`DrainBatches.poll`, then `drain`) keeps it near empty, writing to the bucket. Every boto3
call is counted by operation.
SQS bills each 64 KiB of a request's payload as one request, so billed requests are counted
too (send payloads, and received bodies, in 64 KiB chunks; base64 as the adapter sends it).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from tests.support.ingest import SyncIngest

from bench.common import base_parser, emit, request_bodies
from telemetry.adapters.clock import SystemClock
from telemetry.domain.batching import BatchPolicy
from telemetry.domain.drain import DrainBatches
from telemetry.domain.readings import ReadingBatch, ReadingRules

CHUNK = 64 * 1024


class Calls:
    """boto3 calls by operation, and SQS's billed 64 KiB units."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.billed = 0

    def before(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.ops[model.name] += 1
        if model.service_model.service_name != "sqs":
            return
        size = 0
        if model.name == "SendMessageBatch":
            size = sum(len(e.get("MessageBody", "")) for e in params.get("Entries", []))
        elif model.name == "SendMessage":
            size = len(params.get("MessageBody", ""))
        if model.name != "ReceiveMessage":
            self.billed += max(1, -(-size // CHUNK))

    def after(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        if model.name == "ReceiveMessage":
            size = sum(len(m.get("Body", "")) for m in parsed.get("Messages", []))
            self.billed += max(1, -(-size // CHUNK))

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-call.*.*", self.before)
        client.meta.events.register("after-call.*.*", self.after)
        return client


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_parser(__doc__ or "")
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--one-vehicle", action="store_true",
                    help="each request holds one vehicle's readings (these carry partial "
                    "aggregates, which the worker also writes: ADR 0006)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.readings, args.vehicles = 1000, 10
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    import boto3
    from moto import mock_aws
    from moto.sqs import models

    from telemetry.adapters.s3 import S3Storage
    from telemetry.adapters.sqs import SqsQueue
    from telemetry.entrypoints.aws import provision
    from telemetry.entrypoints.local_aws import faster_moto_receive

    # moto's receive costs O(backlog) per message; the project's O(1) patch of moto's retention
    # check keeps a 200,000-reading backlog drainable (it changes no count of calls).
    original = models.SQSBackend.__dict__.get("is_message_valid_based_on_retention_period")
    fast = faster_moto_receive()
    if fast is not None:
        models.SQSBackend.is_message_valid_based_on_retention_period = fast  # type: ignore[method-assign]
    try:
        return _run(args, mock_aws, boto3, S3Storage, SqsQueue, provision)
    finally:
        if fast is not None and original is not None:
            models.SQSBackend.is_message_valid_based_on_retention_period = original  # type: ignore[method-assign]


def _run(args: Any, mock_aws: Any, boto3: Any, S3Storage: Any, SqsQueue: Any,
         provision: Any) -> dict[str, Any]:
    with mock_aws():
        env = provision("bench-readings", "bench-lake", region="us-east-1")
        sqs_calls, s3_calls = Calls(), Calls()
        queue = SqsQueue(env["TELEMETRY_SQS_QUEUE_URL"],
                         client=sqs_calls.attach(boto3.client("sqs", region_name="us-east-1")))
        storage = S3Storage("bench-lake",
                            client=s3_calls.attach(boto3.client("s3", region_name="us-east-1")))
        sqs_calls.ops.clear()
        sqs_calls.billed = 0
        accept = SyncIngest(queue, SystemClock(), ReadingRules())
        decoder = msgspec.json.Decoder(ReadingBatch)
        start = datetime.now(UTC) - timedelta(milliseconds=args.readings)
        drain = DrainBatches(queue, storage, SystemClock(), BatchPolicy())
        files: list[Any] = []
        bodies = request_bodies(args.readings, args.per_request, vehicles=args.vehicles,
                                start=start, one_vehicle=args.one_vehicle)
        for sent, body in enumerate(bodies, 1):
            accept.execute(decoder.decode(body).readings, None)
            # The worker keeps up, as it does live: moto's SQS slows down with the backlog.
            if sent % 20 == 0:
                while (r := drain.poll(0.0)).received:
                    files.extend(r.files)
        files.extend(drain.until_empty())
    stored = sum(f.readings for f in files)
    if stored != args.readings:
        raise SystemExit(f"stored {stored} readings, expected {args.readings}")
    per_m = 1_000_000 / args.readings
    puts = s3_calls.ops["PutObject"]
    result = {
        "readings": args.readings,
        "per_request": args.per_request,
        "one_vehicle_per_request": args.one_vehicle,
        "sqs_calls_by_op": dict(sqs_calls.ops),
        "s3_calls_by_op": dict(s3_calls.ops),
        "files": len(files),
        "sqs_requests_per_million": round(sum(sqs_calls.ops.values()) * per_m),
        "sqs_billed_requests_per_million": round(sqs_calls.billed * per_m),
        "s3_puts_per_million": round(puts * per_m),
    }
    emit("cost", result, args.json)
    return result


if __name__ == "__main__":
    main()
