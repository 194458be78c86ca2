"""A dead letter is known by its record, not only by its position (issue 20, point 10).

On the real broker: a topic deleted and created again starts its offsets at 0 anew (Tansu
supports DeleteTopics and CreateTopics, as Apache Kafka does), so a new bad message lands
at an old dead letter's (topic, partition, offset). It gets its own row and its own copy;
the same record read again (another consumer group) still finds its row and is not copied
twice."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.plugins.environment import Env, wait_until


async def _recreate_topic(env: Env, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=env.settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([env.settings.topic])
        await wait_until(
            lambda: _absent(admin, env.settings.topic), timeout_s=20, what="the topic deleted"
        )
        await admin.create_topics([NewTopic(env.settings.topic, partitions, 1)])
    finally:
        await admin.close()


async def _absent(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic not in await admin.list_topics()


async def _consume_to_the_end(env: Env) -> None:
    """A consumer of a group of its own (the topic is new to it) until every offset is
    committed."""
    env.settings = env.settings.model_copy(
        update={"group_id": f"{env.name}-{uuid.uuid4().hex[:6]}"}
    )
    async with env.consumer():
        await wait_until(env.all_committed, timeout_s=30, what="offsets at the end")


async def test_a_new_bad_message_at_an_old_dead_letters_position_is_its_own_dead_letter(
    env: Env,
) -> None:
    await env.topics(partitions=1)
    # The same key both times: the same partition, before and after.
    await env.publish(b"first: not json", key=b"k1")
    partitions = len(await env.end_offsets())
    await _consume_to_the_end(env)
    [first] = env.query("SELECT kafka_partition, kafka_offset, published_at FROM dead_letters")
    assert first["kafka_offset"] == 0 and first["published_at"] is not None

    await _recreate_topic(env, partitions)
    await env.publish(b"{second: not json either", key=b"k1")
    # The new message is at the old one's position.
    assert (await env.end_offsets())[first["kafka_partition"]] == 1
    await _consume_to_the_end(env)

    rows = env.query(
        "SELECT kafka_partition, kafka_offset, message_value, published_at"
        " FROM dead_letters ORDER BY id"
    )
    assert [(r["kafka_partition"], r["kafka_offset"], bytes(r["message_value"])) for r in rows] == [
        (first["kafka_partition"], 0, b"first: not json"),
        (first["kafka_partition"], 0, b"{second: not json either"),
    ]
    assert all(r["published_at"] is not None for r in rows)
    assert all(
        r["record_timestamp"] > 0 for r in env.query("SELECT record_timestamp FROM dead_letters")
    )
    copies = await env.read_dlq(3, timeout_s=5)
    assert sorted(c.value for c in copies) == [b"first: not json", b"{second: not json either"]

    # The same record read again (a new group from the start): its row, no second copy.
    await _consume_to_the_end(env)
    assert len(env.query("SELECT id FROM dead_letters")) == 2
    await asyncio.sleep(1)  # a copy sent by mistake would be on the topic by now
    assert len(await env.read_dlq(3, timeout_s=5)) == 2


async def test_the_digest_tells_a_missing_key_from_an_empty_one(env: Env) -> None:
    """The digest's framing: (no key, value) and (empty key, value) are different records,
    and so are ("ab", "c") and ("a", "bc")."""
    digests = env.query(
        "SELECT calsync_record_digest(NULL, 'v'::bytea) AS a,"
        " calsync_record_digest(''::bytea, 'v'::bytea) AS b,"
        " calsync_record_digest('ab'::bytea, 'c'::bytea) AS c,"
        " calsync_record_digest('a'::bytea, 'bc'::bytea) AS d,"
        " calsync_record_digest('v'::bytea, NULL) AS e"
    )[0]
    assert len({bytes(d) for d in digests.values()}) == 5


async def test_a_row_from_before_the_digest_is_found_by_position_and_content(env: Env) -> None:
    """A row written before this change (no timestamp) whose copy was not yet sent: the
    record read again after the upgrade finishes that row, no second one."""
    await env.publish(b"not json, from before", key=b"k1")
    [partition] = [p for p, end in (await env.end_offsets()).items() if end == 1]
    env.query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_digest,"
        " message_key, message_value, error_type, error)"
        " VALUES (%s, %s, 0, calsync_record_digest(%s, %s), %s, %s, 'not_json', 'old')"
        " RETURNING id",
        env.settings.topic,
        partition,
        b"k1",
        b"not json, from before",
        b"k1",
        b"not json, from before",
    )
    await _consume_to_the_end(env)
    rows = env.query("SELECT error, published_at FROM dead_letters")
    assert len(rows) == 1 and rows[0]["error"] == "old" and rows[0]["published_at"] is not None
    assert len(await env.read_dlq(2, timeout_s=5)) == 1
