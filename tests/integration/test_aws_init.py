"""`telemetry aws init`: queues with every attribute explicit, the bucket, the exports;
idempotent, against moto in process and a moto server."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from telemetry.adapters.sqs import SqsQueue
from telemetry.entrypoints import aws as aws_cli
from tests.support import moto as moto_server
from tests.support.moto import AwsTarget

aws = moto_server.aws


def run_init(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    parser = argparse.ArgumentParser(prog="telemetry")
    aws_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["aws", "init", *argv])
    rc = args.func(args)
    out, err = capsys.readouterr()
    exports = {}
    for line in out.splitlines():
        assert line.startswith("export "), line  # stdout is only what `eval` should run
        k, v = shlex.split(line.removeprefix("export "))[0].split("=", 1)
        exports[k] = v
    return rc, exports, err


def test_init_creates_everything_and_is_idempotent(
    aws: AwsTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    name = moto_server.unique("init")
    argv = ["--queue", name, "--bucket", name, "--prefix", "/fleet/", "--region", "us-east-1",
            "--visibility-timeout", "90", "--max-receives", "3", "--retention-days", "2",
            "--message-size", "1048576"]
    rc, exports, err = run_init(capsys, *argv)
    assert rc == 0, err
    assert exports["TELEMETRY_QUEUE"] == "sqs"
    assert exports["TELEMETRY_STORAGE"] == "s3"
    assert exports["TELEMETRY_S3_BUCKET"] == name
    assert exports["TELEMETRY_S3_PREFIX"] == "fleet"
    assert exports["AWS_REGION"] == "us-east-1"
    assert exports.get("AWS_ENDPOINT_URL") == aws.endpoint_url

    sqs = aws.client("sqs")
    url = exports["TELEMETRY_SQS_QUEUE_URL"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "90"
    assert attrs["MessageRetentionPeriod"] == str(2 * 86_400)
    assert attrs["MaximumMessageSize"] == "1048576"
    policy = json.loads(attrs["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 3
    assert policy["deadLetterTargetArn"].endswith(f":{name}-dlq")
    aws.client("s3").head_bucket(Bucket=name)

    # Again, with another visibility timeout: the same queue, updated.
    rc, again, err = run_init(capsys, *argv[:-6], "--visibility-timeout", "45")
    assert rc == 0, err
    assert again["TELEMETRY_SQS_QUEUE_URL"] == url
    q = SqsQueue(url)
    assert q.visibility_timeout == 45
    assert q.max_receives == 5  # the default, set explicitly again
    assert q.queue_max_message_bytes == 256 * 1024


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--message-size", "100"], "message size"),
        (["--max-receives", "0"], "max receives"),
        (["--retention-days", "30"], "retention"),
    ],
)
def test_bad_values_are_refused_before_anything_is_made(
    aws: AwsTarget, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    name = moto_server.unique("bad")
    rc, exports, err = run_init(capsys, "--queue", name, "--bucket", name, *argv)
    assert rc == 2 and exports == {}
    assert message in err
    assert "QueueUrls" not in aws.client("sqs").list_queues(QueueNamePrefix=name)


def test_without_a_region_init_says_so(
    aws: AwsTarget, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    rc, _, err = run_init(capsys, "--queue", "q", "--bucket", "b")
    assert rc == 2
    assert "AWS_REGION" in err
