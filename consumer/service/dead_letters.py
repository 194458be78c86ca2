"""The dead-letter flow of the consumer runner: a message given up on is written once.

Its row first (raw bytes), then its copy on the dead-letter topic, then the row is marked
published, so a retry or a redelivery never copies it twice. The row is known by the record
(position, timestamp, digest of key and value), not by its position alone: a topic deleted
and created again reuses offsets, and a new bad message at an old dead letter's position is
another dead letter. The copy and its fallbacks are the Kafka adapter's
(consumer.adapters.kafka.dead_letters.DeadLetterProducer); the rows are the repository's.
"""

from __future__ import annotations

import structlog

from consumer.adapters.metrics import Metrics
from consumer.domain.errors import describe
from consumer.domain.messages import BadMessage
from consumer.domain.records import ConsumedRecord, UnreadableRecord
from consumer.service.ports import DeadLetterCopies, DeadLetterRows
from consumer.service.retrying import until_done

log = structlog.get_logger(__name__)
_RETRY_INITIAL_S = 0.2


class DeadLetters:
    """Dead-letters records: rows in `rows`, copies through `copies`. Infrastructure that is
    away is waited for, the delay doubling up to `retry_max_s`."""

    def __init__(
        self,
        rows: DeadLetterRows,
        copies: DeadLetterCopies,
        metrics: Metrics,
        retry_max_s: float,
    ) -> None:
        self.rows = rows
        self.copies = copies
        self.metrics = metrics
        self.retry_max_s = retry_max_s

    async def dead_letter(self, record: ConsumedRecord, bad: BadMessage) -> None:
        """The row (raw bytes; idempotent on the record: its position, timestamp, key and
        value), then the copy, once. A failure before the copy went out is raised (the
        caller tries the whole again: the row is found, not written twice)."""
        letter_id, published = await self.rows.record_dead_letter(
            record.position,
            record.timestamp_ms,
            record.key,
            record.value,
            list(record.headers),
            bad.error_type,
            bad.error,
        )
        if published:
            return
        copy_error = await self.copies.send_copy(record, bad)
        # Sent: from here on only the mark is retried, never the copy.
        await until_done(
            lambda: self.rows.mark_dead_letter_published(letter_id, copy_error),
            initial_s=_RETRY_INITIAL_S,
            max_s=self.retry_max_s,
            failed=_mark_failed,
        )
        self.metrics.messages.labels("dead_lettered").inc()
        self.metrics.dead_letters.labels(bad.error_type).inc()
        log.error(
            "message_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error_type=bad.error_type,
            error=bad.error,
            dead_letter_id=letter_id,
        )

    async def unreadable(self, found: UnreadableRecord) -> None:
        """A record the Kafka client could not read, dead-lettered as `record_unreadable`
        (its bytes could not be read: the row and the copy say where it is), however long
        the database or the broker are away."""
        record = ConsumedRecord(found.topic, found.partition, found.offset, None, None, (), 0)
        bad = BadMessage(
            "record_unreadable",
            "the Kafka client could not read the record (its bytes are not kept): "
            f"{describe(found.failure)}",
        )

        def failed(failure: BaseException, attempts: int, retry_in_s: float) -> None:
            log.error(
                "message_processing_failed",
                cause=type(failure).__name__,
                offset=found.offset,
                partition=found.partition,
                retry_in_s=retry_in_s,
            )

        await until_done(
            lambda: self.dead_letter(record, bad),
            initial_s=_RETRY_INITIAL_S,
            max_s=self.retry_max_s,
            failed=failed,
        )


def _mark_failed(failure: BaseException, attempts: int, retry_in_s: float) -> None:
    log.warning("dead_letter_mark_failed", cause=type(failure).__name__, retry_in_s=retry_in_s)
