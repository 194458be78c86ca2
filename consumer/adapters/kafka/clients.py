"""The group's Kafka clients, built from the settings, and the topics they need."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from consumer.settings import Settings

log = structlog.get_logger(__name__)


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    rebalance_timeout_ms = int((settings.shutdown_grace_s + 10) * 1000)
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        group_instance_id=settings.instance_id or None,
        client_id=f"calsync-{settings.group_id}",
        enable_auto_commit=False,  # offsets move only after results are recorded
        auto_offset_reset="earliest",
        rebalance_timeout_ms=rebalance_timeout_ms,
        session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
        heartbeat_interval_ms=max(100, int(settings.kafka_session_timeout_s * 1000 / 3)),
        max_poll_interval_ms=max(300_000, rebalance_timeout_ms),
        max_poll_records=500,
    )


def build_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        client_id=f"calsync-{settings.group_id}-dlq",
    )


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int = 1) -> None:
    """Create missing topics; where the cluster forbids it, say so and go on."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            await admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
            log.info("topics_created", topics=missing, partitions=partitions)
    except TopicAlreadyExistsError:
        pass
    except KafkaError as exc:
        log.warning("topics_not_created", topics=list(topics), cause=repr(exc))
    finally:
        await admin.close()
