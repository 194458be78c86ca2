"""A dead-letter copy the broker refuses for good does not wedge the partition: the row says
why there is no copy, and the offset moves on (issue 20, point 11).

Tansu (the embedded broker) has no ACLs, so a real TopicAuthorizationFailedError cannot be
had from it; the runner is driven here with the Kafka adapter's DeadLetterProducer (its
fallbacks are the adapter's) over a fake producer refusing as Kafka does."""

from __future__ import annotations

import json

from aiokafka import errors as kafka_errors

from calsync_dev.events import booking_event
from consumer.domain.records import Partition
from tests.plugins.environment import wait_until
from tests.unit.fakes import FakeKafkaConsumer, FakeProducer, FakeRepository, record
from tests.unit.test_runner_chains import make_loop

TOPIC = "bookings"
TP = Partition(TOPIC, 0)


class RefusingProducer(FakeProducer):
    """A broker that refuses sends to the dead-letter topic with `error`: every one, or the
    first `times` (then takes them)."""

    def __init__(self, error: Exception, times: int | None = None) -> None:
        super().__init__()
        self.error = error
        self.times = times
        self.attempts = 0

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.attempts += 1
        if self.times is None or self.attempts <= self.times:
            raise self.error
        await super().send_and_wait(topic, value, key, headers)


async def _run(
    error: Exception, times: int | None = None
) -> tuple[FakeRepository, RefusingProducer, FakeKafkaConsumer]:
    loop = await make_loop(producer=RefusingProducer(error, times))
    runner, engine, repository = loop.runner, loop.engine, loop.repository
    engine.open("bk_ok")
    runner._dispatch(record(TOPIC, 0, 0, b"bk_bad", b"{not json"))
    good = json.dumps(booking_event("bk_ok")).encode()
    runner._dispatch(record(TOPIC, 0, 1, b"bk_ok", good))
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
    assert isinstance(loop.producer, RefusingProducer)
    return repository, loop.producer, loop.kafka


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


async def test_a_copy_too_large_for_the_topic_goes_as_a_minimal_one() -> None:
    repository, producer, kafka = await _run(kafka_errors.MessageSizeTooLargeError(), times=1)
    [letter] = repository.dead_letters.values()
    assert letter.copy_error is not None
    assert letter.copy_error.startswith("only a minimal copy: MessageSizeTooLargeError")
    [(_, key, value, headers)] = producer.sent
    assert (key, value) == (None, b"") and ("error.type", b"not_json") in headers
    assert all(name.startswith("error") for name, _ in headers)
    assert kafka.committed_offset(TP) == 2


async def test_a_broker_away_is_waited_for_and_the_copy_sent_once() -> None:
    repository, producer, kafka = await _run(kafka_errors.KafkaConnectionError(), times=2)
    [letter] = repository.dead_letters.values()
    assert letter.published and letter.copy_error is None
    assert producer.attempts == 3 and len(producer.sent) == 1  # whole, once
    [(_, key, value, _)] = producer.sent
    assert (key, value) == (b"bk_bad", b"{not json")
    assert kafka.committed_offset(TP) == 2
