"""The Kafka adapter, in modules by role (as aiokafka's own): `clients` (the group's consumer
and producer built from the settings, the topics they need), `consumer` (the group's consumer
as the runner uses it: records fetched, rewinds past a record the client cannot read, the
rebalance listener, commits bounded by a timeout), `dead_letters` (what a copy on the
dead-letter topic carries, and the producer that sends it with its fallbacks), `admin`
(on-call questions and actions: offsets, the group at the broker, committing for a stopped
group, reading records back, publishing). The names callers use are exported here."""

from consumer.adapters.kafka.admin import KafkaGroupAdmin, Publisher
from consumer.adapters.kafka.clients import build_consumer, build_producer, ensure_topics
from consumer.adapters.kafka.consumer import GroupConsumer
from consumer.adapters.kafka.dead_letters import (
    DLQ_COPY_MAX_BYTES,
    DLQ_ERROR,
    DLQ_ERROR_TYPE,
    DLQ_HEADERS_DROPPED,
    DLQ_KEY_TRUNCATED,
    DLQ_REPLAY_OF,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    DLQ_VALUE_TRUNCATED,
    DeadLetterProducer,
    dead_letter_copy,
    header_text,
)

__all__ = [
    "DLQ_COPY_MAX_BYTES",
    "DLQ_ERROR",
    "DLQ_ERROR_TYPE",
    "DLQ_HEADERS_DROPPED",
    "DLQ_KEY_TRUNCATED",
    "DLQ_REPLAY_OF",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TOPIC",
    "DLQ_VALUE_TRUNCATED",
    "DeadLetterProducer",
    "GroupConsumer",
    "KafkaGroupAdmin",
    "Publisher",
    "build_consumer",
    "build_producer",
    "dead_letter_copy",
    "ensure_topics",
    "header_text",
]
