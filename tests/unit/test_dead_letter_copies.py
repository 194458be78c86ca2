"""A dead-letter copy the broker refuses for good does not wedge the partition: the row says
why there is no copy, and the offset moves on (issue 20, point 11).

Tansu (the embedded broker) has no ACLs, so a real TopicAuthorizationFailedError cannot be
had from it; the runner is driven here with the fake producer refusing as Kafka does."""

from __future__ import annotations

import json

from aiokafka import errors as kafka_errors
from aiokafka.structs import TopicPartition

from consumer.adapters.metrics import Metrics
from consumer.service.runner import ConsumerRunner
from consumer.settings import Settings
from tests.plugins.environment import wait_until
from tests.plugins.events import booking_event
from tests.unit.fakes import FakeKafkaConsumer, FakeProducer, FakeRepository, record
from tests.unit.test_runner_chains import GatedEngine

TOPIC = "bookings"
TP = TopicPartition(TOPIC, 0)


class RefusingProducer(FakeProducer):
    """A broker that refuses every send to the dead-letter topic with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.attempts = 0

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.attempts += 1
        raise self.error


async def _run(error: Exception) -> tuple[FakeRepository, RefusingProducer, FakeKafkaConsumer]:
    settings = Settings(
        topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", commit_interval_s=0.01, infra_retry_max_s=0.05
    )
    engine, repository = GatedEngine(), FakeRepository()
    kafka, producer = FakeKafkaConsumer([TP]), RefusingProducer(error)
    runner = ConsumerRunner(settings, engine, repository, kafka, producer, Metrics())  # type: ignore[arg-type]
    engine.open("bk_ok")
    runner._dispatch(TP, record(TOPIC, 0, 0, b"bk_bad", b"{not json"))
    good = json.dumps(booking_event("bk_ok")).encode()
    runner._dispatch(TP, record(TOPIC, 0, 1, b"bk_ok", good))
    try:
        await wait_until(
            lambda: (
                all(d.published for d in repository.dead_letters.values())
                and repository.dead_letters
                and engine.finished
            ),
            5,
            "the dead letter recorded and the next message handled",
        )
        await runner._commit(force=True)
    finally:
        await runner.drain([TP], reason="test over")
    return repository, producer, kafka


async def test_a_dead_letter_topic_this_client_may_not_write_leaves_no_copy_and_moves_on() -> None:
    repository, producer, kafka = await _run(
        kafka_errors.TopicAuthorizationFailedError("bookings.dlq")
    )
    [letter] = repository.dead_letters.values()
    assert letter.published and letter.error_type == "not_json"
    assert letter.copy_error is not None
    assert letter.copy_error.startswith(
        "no copy: the broker refuses this client the dead-letter topic 'bookings.dlq'"
    )
    assert "TopicAuthorizationFailedError" in letter.copy_error
    assert producer.attempts == 1  # a smaller copy would be refused the same way
    assert kafka.committed_offset(TP) == 2  # past the bad message and the good one


async def test_a_cluster_authorization_refusal_is_recorded_the_same_way() -> None:
    repository, _, kafka = await _run(kafka_errors.ClusterAuthorizationFailedError())
    [letter] = repository.dead_letters.values()
    assert letter.copy_error is not None and "ClusterAuthorizationFailedError" in letter.copy_error
    assert kafka.committed_offset(TP) == 2


async def test_another_refusal_for_good_tries_a_minimal_copy_then_records_it() -> None:
    repository, producer, kafka = await _run(kafka_errors.InvalidTopicError())
    [letter] = repository.dead_letters.values()
    assert letter.copy_error is not None
    assert letter.copy_error.startswith("no copy: InvalidTopicError")
    assert producer.attempts == 2  # the copy, then the minimal one
    assert kafka.committed_offset(TP) == 2
