"""The dead-letter topic's copies: what a copy carries (Kafka Connect's convention: the
original key, value and headers, plus where it came from and why), cut to fit, and the
producer that sends it with its fallbacks (DeadLetterProducer: a minimal copy for a copy
the broker refuses for what it is, none for a topic it refuses this client)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.adapters.classify import KAFKA_AUTHORIZATION, is_retriable
from consumer.domain.errors import describe
from consumer.domain.messages import BadMessage
from consumer.domain.records import ConsumedRecord

log = structlog.get_logger(__name__)

# Header names on dead-lettered copies (modelled on Kafka Connect's __connect.errors.*).
DLQ_ERROR = "error"
DLQ_ERROR_TYPE = "error.type"
DLQ_SOURCE_TOPIC = "error.source.topic"
DLQ_SOURCE_PARTITION = "error.source.partition"
DLQ_SOURCE_OFFSET = "error.source.offset"
# On a message `calsync dlq replay` put back: the dead_letters id it is a copy of.
DLQ_REPLAY_OF = "calsync.dlq.replay-of"


# The DLQ copy stays under Kafka's default largest message (1 MiB, with room for the
# record's own overhead): the dead_letters row keeps the message whole, whatever its size.
DLQ_COPY_MAX_BYTES = 900 * 1024
DLQ_VALUE_TRUNCATED = "error.value.truncated-from"
DLQ_KEY_TRUNCATED = "error.key.truncated-from"
DLQ_HEADERS_DROPPED = "error.headers.dropped"


def header_text(text: str) -> bytes:
    """Header values we write: UTF-8, whatever the text holds (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace")


def dead_letter_copy(
    key: bytes | None,
    value: bytes | None,
    original: Sequence[tuple[str, bytes]],
    error_type: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key, value and headers of a message's copy on the dead-letter topic: the original
    ones (Kafka Connect's convention) plus where it came from and why. A message too large
    to copy whole loses its value first, then its original headers, then its key, each
    replaced by a header saying how large it was."""
    ours = {
        DLQ_ERROR,
        DLQ_ERROR_TYPE,
        DLQ_SOURCE_TOPIC,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_OFFSET,
        DLQ_VALUE_TRUNCATED,
        DLQ_KEY_TRUNCATED,
        DLQ_HEADERS_DROPPED,
    }
    kept = [(k, v) for k, v in original if k not in ours]
    added = [
        (DLQ_ERROR, header_text(error)),
        (DLQ_ERROR_TYPE, header_text(error_type)),
        (DLQ_SOURCE_TOPIC, header_text(topic)),
        (DLQ_SOURCE_PARTITION, str(partition).encode()),
        (DLQ_SOURCE_OFFSET, str(offset).encode()),
    ]

    def size() -> int:
        return (
            len(key or b"")
            + len(value or b"")
            + sum(
                len(k.encode("utf-8", "surrogateescape")) + len(v or b"")
                for k, v in (*kept, *added)
            )
        )

    if size() > DLQ_COPY_MAX_BYTES and value:
        added.append((DLQ_VALUE_TRUNCATED, str(len(value)).encode()))
        value = b""
    if size() > DLQ_COPY_MAX_BYTES and kept:
        added.append((DLQ_HEADERS_DROPPED, str(len(kept)).encode()))
        kept = []
    if size() > DLQ_COPY_MAX_BYTES and key:
        added.append((DLQ_KEY_TRUNCATED, str(len(key)).encode()))
        key = b""
    if key is None and value is None:  # Kafka clients refuse a record with neither
        value = b""
    return key, value, [*kept, *added]


class DeadLetterProducer:
    """The copies on the dead-letter topic `topic` (consumer.service.ports.DeadLetterCopies),
    sent by the group's dead-letter producer (consumer.adapters.kafka.clients)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_copy(self, record: ConsumedRecord, bad: BadMessage) -> str | None:
        """The copy on the dead-letter topic. A broker that refuses it for what it is (too
        large for the topic) gets a minimal one (no key, value or original headers); one
        that refuses even that, or refuses this client the topic (an ACL missing), gets
        none, and the answer says why (None: sent). Only a fault that passes (the broker
        away, a leader moving) is raised, for the caller to try again."""
        key, value, headers = dead_letter_copy(
            record.key,
            record.value,
            record.headers,
            bad.error_type,
            bad.error,
            record.topic,
            record.partition,
            record.offset,
        )
        try:
            await self._producer.send_and_wait(self.topic, value=value, key=key, headers=headers)
            return None
        except KafkaError as exc:
            if is_retriable(exc):
                raise
            first = exc
        if isinstance(first, KAFKA_AUTHORIZATION):
            # A smaller copy would be refused the same way: the refusal is the topic's.
            return self._no_copy(
                f"no copy: the broker refuses this client the dead-letter topic "
                f"{self.topic!r} ({describe(first, 200)})",
                first,
                record,
            )
        minimal = [(k, v) for k, v in headers if k.startswith("error")]
        try:
            await self._producer.send_and_wait(self.topic, value=b"", key=None, headers=minimal)
            return f"only a minimal copy: {describe(first, 200)}"
        except KafkaError as exc:
            if is_retriable(exc):
                raise
            return self._no_copy(f"no copy: {describe(exc, 200)}", exc, record)

    @staticmethod
    def _no_copy(copy_error: str, exc: KafkaError, record: ConsumedRecord) -> str:
        log.error(
            "dead_letter_copy_refused",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            cause=type(exc).__name__,
            copy_error=copy_error,
        )
        return copy_error
