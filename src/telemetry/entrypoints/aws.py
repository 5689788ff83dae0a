"""`telemetry aws init`: the SQS queues and the S3 bucket, and the variables that point at them.

The local moto server that `telemetry demo --backend aws` and the tests use is not product code:
it lives in `telemetry.entrypoints.local_aws`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from telemetry.domain.errors import QueueUnavailable, StorageUnavailable

# ------------------------------------------------------------------ init


def provision(
    queue: str,
    bucket: str,
    *,
    region: str,
    prefix: str = "",
    visibility_timeout: int = 120,
    max_receives: int = 5,
    retention_seconds: int = 4 * 86_400,
    message_size: int = 256 * 1024,
) -> dict[str, str]:
    """Create or update the queues and the bucket; the TELEMETRY_* settings that use them."""
    from telemetry.adapters.aws_client import make_client
    from telemetry.adapters.s3 import ensure_bucket
    from telemetry.adapters.sqs import QueueSpec, ensure_queue

    spec = QueueSpec(queue, visibility_timeout, max_receives, retention_seconds, message_size)
    made = ensure_queue(spec, client=make_client("sqs", region_name=region, read_timeout=30))
    ensure_bucket(bucket, region)
    out = {
        "TELEMETRY_QUEUE": "sqs",
        "TELEMETRY_SQS_QUEUE_URL": made.url,
        "TELEMETRY_STORAGE": "s3",
        "TELEMETRY_S3_BUCKET": bucket,
    }
    if prefix.strip("/"):
        out["TELEMETRY_S3_PREFIX"] = prefix.strip("/")
    return out


def cmd_init(args: argparse.Namespace) -> int:
    from telemetry.adapters.aws_client import NO_REGION, AwsSetupError, resolve_region

    region = args.region or resolve_region()
    if not region:
        print(f"telemetry aws init: {NO_REGION}, or pass --region", file=sys.stderr)
        return 2
    try:
        settings = provision(
            args.queue,
            args.bucket,
            region=region,
            prefix=args.prefix,
            visibility_timeout=args.visibility_timeout,
            max_receives=args.max_receives,
            retention_seconds=round(args.retention_days * 86_400),
            message_size=args.message_size,
        )
    except (ValueError, AwsSetupError) as exc:
        print(f"telemetry aws init: {exc}", file=sys.stderr)
        return 2
    except (QueueUnavailable, StorageUnavailable) as exc:
        print(f"telemetry aws init: {exc}", file=sys.stderr)
        return 1
    # Progress on stderr, settings on stdout: `eval "$(telemetry aws init ...)"` works.
    print(f"queue {args.queue} (dead letters: {args.queue}-dlq), bucket {args.bucket}, "
          f"region {region}: ready", file=sys.stderr)
    settings["AWS_REGION"] = region
    if os.environ.get("AWS_ENDPOINT_URL"):
        settings["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    for k, v in settings.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "aws", help="set up the AWS backend (SQS + S3)",
        description="Set up the AWS backend. Uses boto3's standard variables (AWS_REGION, "
        "AWS_ENDPOINT_URL, credentials).",
    )
    asub = p.add_subparsers(dest="aws_command", required=True, metavar="ACTION")
    ip = asub.add_parser(
        "init", help="create the queue, its dead-letter queue and the bucket (idempotent)",
        description="Create or update the SQS dead-letter queue NAME-dlq, the queue NAME with "
        "its redrive policy, message size, visibility timeout and retention set explicitly, "
        "and the S3 bucket; then print the variables to export. Safe to run again.",
    )
    ip.add_argument("--queue", required=True, help="queue name (standard queue)")
    ip.add_argument("--bucket", required=True, help="bucket name")
    ip.add_argument("--prefix", default="", help="key prefix of the lake in the bucket")
    ip.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, "
                    "the AWS config file)")
    ip.add_argument("--visibility-timeout", type=int, default=120, metavar="SECONDS",
                    help="seconds a received message stays invisible (default 120)")
    ip.add_argument("--max-receives", type=int, default=5, metavar="N",
                    help="receives before a message is dead-lettered (default 5)")
    ip.add_argument("--retention-days", type=float, default=4.0, metavar="DAYS",
                    help="how long an undelivered message is kept (default 4)")
    ip.add_argument("--message-size", type=int, default=256 * 1024, metavar="BYTES",
                    help="MaximumMessageSize, 1024..1048576 (default 262144)")
    ip.set_defaults(func=cmd_init)
