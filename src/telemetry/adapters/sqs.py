"""The Queue port on Amazon SQS (a standard queue with a redrive policy), through boto3.

Semantics map one to one: SQS's visibility timeout, `ApproximateReceiveCount` and redrive
policy are the port's visibility timeout, receive count and dead-letter queue. What the port
does not say, this module decides:

- Bodies: the domain hands over UTF-8 JSON text, which travels as is. SQS accepts only some
  unicode characters (#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF) and JSON may carry
  U+FFFE or U+FFFF raw, and the port takes any bytes; such a body travels base64-encoded, marked
  by the message attribute `telemetry-enc`. `max_message_bytes` keeps room for that (3/4 of the
  queue's MaximumMessageSize), so no body the domain packs is ever refused.
- Batching: SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch with up to 10
  entries and 1 MiB of payload per call. botocore retries throttled and failed calls; entries
  that fail inside a successful call are retried here, and only those.
- Receipts that SQS calls invalid (the message is gone, or no longer in flight) are ignored on
  delete and change_visibility, as the port says. SQS, unlike the in-memory queue, may honour a
  stale receipt on delete; that is safe here because the worker deletes only after storing.
- boto3 blocks: callers run this adapter in threads (the HTTP handler does), never on the event
  loop. Every botocore error leaves this module as QueueUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from telemetry.adapters.aws_client import make_client
from telemetry.domain.errors import QueueUnavailable
from telemetry.domain.ports.consuming import Message
from telemetry.domain.ports.depth import QueueDepth

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

ENCODING_ATTRIBUTE = "telemetry-enc"
_BASE64 = "base64"
_EMPTY = "empty"  # SQS refuses an empty body; base64 of nothing is nothing
# SQS counts an attribute's name, data type and value towards the message size.
_ATTRIBUTES_BYTES = len(ENCODING_ATTRIBUTE) + len("String") + len(_BASE64)
_SIZE_MARGIN = 64  # headroom over that count, should SQS ever count a few bytes more

SQS_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # what a queue created without the attribute gets
BATCH_MAX_ENTRIES = 10
BATCH_MAX_PAYLOAD = 1024 * 1024
LONG_POLL_MAX_SECONDS = 20
CALL_READ_TIMEOUT_S = 5.0  # every call but a long poll: SQS answers in milliseconds
MAX_VISIBILITY_SECONDS = 43_200
PARTIAL_FAILURE_ATTEMPTS = 5

_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Codes of batch entries whose receipt no longer names a message in flight: nothing to do.
_GONE = ("ReceiptHandleIsInvalid", "MessageNotInflight")
_REGION_IN_URL = re.compile(r"^https://(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d)\.(?:queue\.)?amazonaws")


@dataclass(frozen=True, slots=True)
class _Entry:
    """One outgoing message, already in SQS's form."""

    id: str
    body: str
    encoding: str | None  # the value of ENCODING_ATTRIBUTE; None: the body is the text

    @property
    def size(self) -> int:
        return len(self.body.encode()) + (_ATTRIBUTES_BYTES if self.encoding else 0)

    def request(self) -> dict[str, Any]:
        e: dict[str, Any] = {"Id": self.id, "MessageBody": self.body}
        if self.encoding:
            e["MessageAttributes"] = {
                ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": self.encoding}
            }
        return e


def encode_body(body: bytes) -> tuple[str, str | None]:
    """The SQS message body for `body`, and how it was encoded (None: as UTF-8 text)."""
    if not body:
        return " ", _EMPTY
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _NOT_SQS_TEXT.search(text):
        return text, None
    return base64.b64encode(body).decode("ascii"), _BASE64


def _encoding(message: Any) -> str | None:
    attr = message.get("MessageAttributes", {}).get(ENCODING_ATTRIBUTE, {})
    return attr.get("StringValue")  # type: ignore[no-any-return]


def decode_body(message: Any) -> bytes:
    body: str = message.get("Body", "")
    enc = _encoding(message)
    if enc == _EMPTY:
        return b""
    if enc == _BASE64:
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            pass  # handed on as is: the domain sees a poison message and lets it dead-letter
    return body.encode("utf-8")


def region_of(queue_url: str) -> str | None:
    """The region in an AWS queue URL; None for other endpoints (moto, LocalStack, VPC)."""
    m = _REGION_IN_URL.match(queue_url)
    return m.group(1) if m else None


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise QueueUnavailable(f"SQS {what}: {_code(exc)}") from exc


def _chunks(entries: Sequence[_Entry]) -> Iterator[list[_Entry]]:
    """Consecutive groups within SendMessageBatch's limits: 10 entries, 1 MiB in total."""
    group: list[_Entry] = []
    size = 0
    for e in entries:
        if group and (len(group) == BATCH_MAX_ENTRIES or size + e.size > BATCH_MAX_PAYLOAD):
            yield group
            group, size = [], 0
        group.append(e)
        size += e.size
    if group:
        yield group


@dataclass(frozen=True, slots=True)
class _Attributes:
    max_message_bytes: int
    visibility_timeout: float
    dead_letter_arn: str | None
    max_receives: int | None


class SqsQueue:
    """A standard SQS queue. Its attributes (message size, visibility timeout, redrive policy)
    are read once: by `connect`, or at their first use; a queue that does not answer then raises
    QueueUnavailable. Constructing one does no I/O.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        client: SQSClient | None = None,
        region_name: str | None = None,
        max_attempts: int | None = None,
        partial_failure_attempts: int = PARTIAL_FAILURE_ATTEMPTS,
        dead_letter_wait_seconds: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not queue_url:
            raise ValueError("an SQS queue URL is required")
        self.queue_url = queue_url
        region = region_name or region_of(queue_url)
        # A long poll holds the connection for up to 20 s before the answer starts; every other
        # call answers at once, so a hung endpoint is given up on after a few seconds (the
        # ingest's send threads must not pile up behind it).
        self._poll_client: SQSClient = client or make_client(
            "sqs", region_name=region, read_timeout=LONG_POLL_MAX_SECONDS + 10,
            max_attempts=max_attempts,
        )
        self._client: SQSClient = client or make_client(
            "sqs", region_name=region, read_timeout=CALL_READ_TIMEOUT_S, max_attempts=max_attempts,
        )
        self._attempts = max(1, partial_failure_attempts)
        # A short poll samples some SQS hosts only and may answer empty while messages wait;
        # before the dead-letter queue is taken to be empty, it is asked with a long poll.
        self._dlq_wait = min(LONG_POLL_MAX_SECONDS, max(0, dead_letter_wait_seconds))
        self._sleep = sleep
        self._attributes: _Attributes | None = None
        self._dlq_url: str | None = None  # resolved on first use: workers never need it

    @classmethod
    def connect(cls, queue_url: str, **kwargs: Any) -> SqsQueue:
        """A queue whose attributes are read now: a missing queue fails here, at startup."""
        queue = cls(queue_url, **kwargs)
        queue.load_attributes()
        return queue

    def load_attributes(self) -> _Attributes:
        if self._attributes is None:
            with _translated(f"queue {self.queue_url}"):
                attrs = self._client.get_queue_attributes(
                    QueueUrl=self.queue_url,
                    AttributeNames=["MaximumMessageSize", "VisibilityTimeout", "RedrivePolicy"],
                ).get("Attributes", {})
            policy = json.loads(attrs.get("RedrivePolicy") or "{}")
            self._attributes = _Attributes(
                int(attrs.get("MaximumMessageSize", DEFAULT_MAX_MESSAGE_BYTES)),
                float(attrs.get("VisibilityTimeout", 30)),
                policy.get("deadLetterTargetArn"),
                int(policy["maxReceiveCount"]) if "maxReceiveCount" in policy else None,
            )
        return self._attributes

    @property
    def queue_max_message_bytes(self) -> int:
        return self.load_attributes().max_message_bytes

    @property
    def dead_letter_arn(self) -> str | None:
        return self.load_attributes().dead_letter_arn

    @property
    def max_receives(self) -> int | None:
        return self.load_attributes().max_receives

    # -------------------------------------------------------------- the port

    @property
    def max_message_bytes(self) -> int:
        # Room for base64 (4 characters per 3 bytes) and its attribute, so an odd body fits too.
        return (self.queue_max_message_bytes - _ATTRIBUTES_BYTES - _SIZE_MARGIN) // 4 * 3

    @property
    def visibility_timeout(self) -> float:
        return self.load_attributes().visibility_timeout

    def send(self, bodies: Sequence[bytes]) -> None:
        limit = self.max_message_bytes
        entries: list[_Entry] = []
        for i, b in enumerate(bodies):
            if len(b) > limit:
                raise ValueError(f"message of {len(b)} bytes over {limit}")
            text, encoding = encode_body(b)
            entries.append(_Entry(str(i), text, encoding))
        for group in _chunks(entries):
            self._send_group(self.queue_url, group)

    def receive(self, max_messages: int, wait_seconds: float = 0.0) -> list[Message]:
        if max_messages < 1:
            return []
        # Whole seconds, rounded down: the port promises to wait *up to* wait_seconds.
        wait = min(LONG_POLL_MAX_SECONDS, max(0, int(wait_seconds)))
        with _translated("receive"):
            resp = self._poll_client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(BATCH_MAX_ENTRIES, max_messages),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=[ENCODING_ATTRIBUTE],
            )
        return [self._message(m) for m in resp.get("Messages", [])]

    def delete(self, receipts: Sequence[str]) -> None:
        self._delete(self.queue_url, receipts)

    def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        seconds = min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(timeout_seconds)))
        self._per_receipt(
            "change_message_visibility_batch",
            self.queue_url,
            receipts,
            {"VisibilityTimeout": seconds},
        )

    def dead_letters(self, max_messages: int) -> list[Message]:
        dlq = self._dead_letter_url()
        if dlq is None or max_messages < 1:
            return []
        # Received with a visibility timeout (a timeout of 0 would hand the same first messages
        # back on every call), then made visible again at once: a look, not a consumption.
        seen: dict[str, Message] = {}
        receipts: list[str] = []
        try:
            while len(seen) < max_messages:
                n = min(BATCH_MAX_ENTRIES, max_messages - len(seen))
                batch = self._receive_raw(dlq, n, wait=0 if seen else self._dlq_wait)
                fresh = [m for m in batch if m["MessageId"] not in seen]
                receipts.extend(m["ReceiptHandle"] for m in batch)
                if not fresh:
                    break
                for m in fresh:
                    seen[m["MessageId"]] = Message(
                        m["MessageId"], decode_body(m), "", _receive_count(m)
                    )
        finally:
            if receipts:
                self._per_receipt(
                    "change_message_visibility_batch", dlq, receipts, {"VisibilityTimeout": 0}
                )
        return list(seen.values())[:max_messages]

    def redrive(self) -> int:
        """Receive from the dead-letter queue, send to the queue, delete from the dead-letter
        queue. A crash in between sends a message twice, never loses one (at-least-once).
        Everything in the dead-letter queue comes here: it must serve this queue alone, as the
        one `aws init` makes does.
        StartMessageMoveTask would do it server-side, but it is asynchronous, cannot report how
        many it moved when it returns, and moto does not implement it."""
        dlq = self._dead_letter_url()
        if dlq is None:
            return 0
        moved = 0
        while True:
            batch = self._receive_raw(dlq, BATCH_MAX_ENTRIES, wait=0)
            if not batch and self._dlq_wait:
                batch = self._receive_raw(dlq, BATCH_MAX_ENTRIES, wait=self._dlq_wait)
            if not batch:
                break
            # As received: the body keeps its encoding, so it is moved, never re-encoded.
            entries = [_Entry(str(i), m["Body"], _encoding(m)) for i, m in enumerate(batch)]
            for group in _chunks(entries):
                self._send_group(self.queue_url, group)
            self._delete(dlq, [m["ReceiptHandle"] for m in batch])
            moved += len(batch)
        return moved

    def check(self) -> None:
        with _translated("check"):
            self._client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])

    # -------------------------------------------------------------- beyond the port

    def depth(self) -> QueueDepth:
        """The approximate counts SQS gives; the oldest message's age it publishes to
        CloudWatch only (`telemetry triggers` takes it from what the workers saw instead). The
        dead-letter count is None when that queue cannot be read (a worker's role need not)."""
        names: list[Any] = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        with _translated("depth"):
            attrs = self._client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=names).get("Attributes", {})
        dead: int | None = None
        try:
            dlq = self._dead_letter_url()
            if dlq is not None:
                with _translated("depth of the dead-letter queue"):
                    dead = int(self._client.get_queue_attributes(
                        QueueUrl=dlq, AttributeNames=names[:1]
                    ).get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
        except QueueUnavailable:
            dead = None
        in_flight = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
        # SQS does not say when a message in flight is visible again: at the latest one
        # visibility timeout from now, unless its receiver extends it.
        by = (datetime.now(UTC) + timedelta(seconds=self.visibility_timeout)
              if in_flight else None)
        return QueueDepth(int(attrs.get("ApproximateNumberOfMessages", 0)), in_flight, dead,
                          None, by, exact=False)

    # -------------------------------------------------------------- helpers

    def _message(self, m: Any) -> Message:
        return Message(m["MessageId"], decode_body(m), m["ReceiptHandle"], _receive_count(m))

    def _receive_raw(self, url: str, n: int, *, wait: int) -> list[Any]:
        with _translated("receive from the dead-letter queue"):
            resp = self._poll_client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=n,
                VisibilityTimeout=60,  # long enough to get through a redrive round
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=[ENCODING_ATTRIBUTE],
            )
        return list(resp.get("Messages", []))

    def _dead_letter_url(self) -> str | None:
        if self.dead_letter_arn is None:
            return None
        if self._dlq_url is None:
            # arn:aws:sqs:<region>:<account>:<name>
            _, _, _, _, account, name = self.dead_letter_arn.split(":", 5)
            with _translated(f"dead-letter queue {self.dead_letter_arn}"):
                self._dlq_url = self._client.get_queue_url(
                    QueueName=name, QueueOwnerAWSAccountId=account
                )["QueueUrl"]
        return self._dlq_url

    def _send_group(self, url: str, group: list[_Entry]) -> None:
        pending = group
        failed: list[Any] = []
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(min(1.0, 0.05 * 2**attempt))
            with _translated("send"):
                resp = self._client.send_message_batch(
                    QueueUrl=url, Entries=[e.request() for e in pending]  # type: ignore[misc]
                )
            failed = list(resp.get("Failed", []))
            if not failed:
                return
            ours = [f for f in failed if f.get("SenderFault")]
            if ours:  # the same request would be refused again
                raise QueueUnavailable(
                    f"SQS refused {len(ours)} message(s): {ours[0].get('Code')}: "
                    f"{ours[0].get('Message', '')}"
                )
            ids = {f["Id"] for f in failed}
            pending = [e for e in pending if e.id in ids]
        raise QueueUnavailable(
            f"SQS did not take {len(pending)} message(s) after {self._attempts} attempts: "
            f"{failed[0].get('Code')}"
        )

    def _delete(self, url: str, receipts: Sequence[str]) -> None:
        self._per_receipt("delete_message_batch", url, receipts, {})

    def _per_receipt(
        self, operation: str, url: str, receipts: Sequence[str], extra: dict[str, Any]
    ) -> None:
        """Run a batch operation over receipts, 10 at a time; retry the entries that failed on
        SQS's side, ignore those whose message is gone."""
        unique = list(dict.fromkeys(r for r in receipts if r))
        call = getattr(self._client, operation)
        for start in range(0, len(unique), BATCH_MAX_ENTRIES):
            pending = {
                str(i): r for i, r in enumerate(unique[start : start + BATCH_MAX_ENTRIES])
            }
            failed: list[Any] = []
            for attempt in range(self._attempts):
                if attempt:
                    self._sleep(min(1.0, 0.05 * 2**attempt))
                entries = [{"Id": i, "ReceiptHandle": r, **extra} for i, r in pending.items()]
                with _translated(operation):
                    resp = call(QueueUrl=url, Entries=entries)
                failed = [
                    f for f in resp.get("Failed", []) if not str(f.get("Code", "")).endswith(_GONE)
                ]
                if not failed:
                    break
                ours = [f for f in failed if f.get("SenderFault")]
                if ours:
                    raise QueueUnavailable(
                        f"SQS {operation}: {ours[0].get('Code')}: {ours[0].get('Message', '')}"
                    )
                pending = {f["Id"]: pending[f["Id"]] for f in failed}
            else:
                raise QueueUnavailable(
                    f"SQS {operation}: {len(pending)} entries failed after {self._attempts} "
                    f"attempts: {failed[0].get('Code')}"
                )


def _receive_count(m: Any) -> int:
    return int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


# ------------------------------------------------------------------ provisioning


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """What `telemetry aws init` sets on the queue; every attribute explicit, so a queue made
    by hand or by an older SQS default never differs silently."""

    name: str
    visibility_timeout: int = 120
    max_receives: int = 5
    retention_seconds: int = 4 * 86_400
    message_size: int = 256 * 1024

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,76}", self.name):
            raise ValueError(
                "queue name: 1-76 letters, digits, '-' or '_' (standard queues only; "
                "'-dlq' is appended for the dead-letter queue)"
            )
        if not 0 <= self.visibility_timeout <= MAX_VISIBILITY_SECONDS:
            raise ValueError(f"visibility timeout: 0..{MAX_VISIBILITY_SECONDS} seconds")
        if not 1 <= self.max_receives <= 1000:
            raise ValueError("max receives: 1..1000")
        if not 60 <= self.retention_seconds <= 1_209_600:
            raise ValueError("retention: 60 s .. 14 days")
        if not 1024 <= self.message_size <= SQS_MAX_MESSAGE_BYTES:
            raise ValueError(f"message size: 1024..{SQS_MAX_MESSAGE_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class ProvisionedQueue:
    url: str
    arn: str
    dead_letter_url: str
    dead_letter_arn: str


def ensure_queue(spec: QueueSpec, *, client: SQSClient | None = None) -> ProvisionedQueue:
    """Create or update the dead-letter queue and the queue with its redrive policy.

    Idempotent: an existing queue gets the attributes set again (CreateQueue refuses a name
    that exists with other attributes, so it is only called for a queue that does not).
    """
    sqs: SQSClient = client or make_client("sqs", read_timeout=30)
    dlq_attrs = {
        # A dead letter keeps its first enqueue time, so the longest retention keeps it the
        # longest after it arrives.
        "MessageRetentionPeriod": str(1_209_600),
        "MaximumMessageSize": str(spec.message_size),
    }
    with _translated("provision"):
        dlq_url = _create_or_update(sqs, spec.name + "-dlq", dlq_attrs)
        dlq_arn = _arn(sqs, dlq_url)
        attrs = {
            "VisibilityTimeout": str(spec.visibility_timeout),
            "MessageRetentionPeriod": str(spec.retention_seconds),
            "MaximumMessageSize": str(spec.message_size),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(spec.max_receives)}
            ),
        }
        url = _create_or_update(sqs, spec.name, attrs)
        return ProvisionedQueue(url, _arn(sqs, url), dlq_url, dlq_arn)


def _create_or_update(sqs: SQSClient, name: str, attrs: dict[str, str]) -> str:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if "NonExistentQueue" not in _code(exc) and "QueueDoesNotExist" not in _code(exc):
            raise
        return sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]  # type: ignore[arg-type]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)  # type: ignore[arg-type]
    return url


def _arn(sqs: SQSClient, url: str) -> str:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return attrs["QueueArn"]


if TYPE_CHECKING:  # conformance, checked by mypy; import-linter sees the implementer
    from telemetry.domain.ports.consuming import MessageConsumer
    from telemetry.domain.ports.dead_letters import DeadLetters
    from telemetry.domain.ports.depth import QueueDepthProbe
    from telemetry.domain.ports.health import HealthCheck
    from telemetry.domain.ports.sending import MessageSender

    def _conforms(x: SqsQueue) -> tuple[
        MessageSender, MessageConsumer, DeadLetters, HealthCheck, QueueDepthProbe
    ]:
        return (x, x, x, x, x)
