"""Reading one's own transactional commit back (raystream._kafka.admin.wait_committed).

A transaction's offsets can become readable a little after ``commit_transaction`` returns,
partition by partition, when several producers commit to one group at once (as a job's
workers do). A drained worker reads its last commit back before it reports, so that whoever
reads the offsets next (recovery, the views, ``wait_for_views``) sees the whole epoch."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from raystream._kafka.admin import wait_committed
from raystream.dev.broker import EmbeddedBroker
from raystream.errors import KafkaError

from .kafka_helpers import create_topic


def _consumer(bs: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})


def test_wait_committed_waits_for_the_commit_and_names_what_is_behind(
    broker: EmbeddedBroker, unique: str
) -> None:
    bs, topic, group = broker.bootstrap, f"{unique}.in", f"{unique}-g"
    create_topic(bs, topic, 2)
    c = _consumer(bs, group)
    try:
        c.commit(
            offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 3)], asynchronous=False
        )
        wait_committed(c, {(topic, 0): 5, (topic, 1): 3}, timeout=5)
        with pytest.raises(KafkaError, match=rf"{topic}\[1\] at 3, not 9"):
            wait_committed(c, {(topic, 0): 5, (topic, 1): 9}, timeout=0.3, what="the test's")

        writer = _consumer(bs, group)
        later = threading.Timer(
            0.3,
            lambda: writer.commit(offsets=[TopicPartition(topic, 1, 9)], asynchronous=False),
        )
        later.start()
        try:
            wait_committed(c, {(topic, 0): 5, (topic, 1): 9}, timeout=20)
        finally:
            later.join()
            writer.close()
        got = c.committed([TopicPartition(topic, 1)], timeout=10)
        assert got[0].offset == 9
    finally:
        c.close()


def test_concurrent_transactions_are_read_back_whole(broker: EmbeddedBroker, unique: str) -> None:
    """Four producers commit offsets to one group at once; after wait_committed each reads its
    whole commit back with a fresh consumer, every time (without the wait, measured on the
    embedded broker, about 4 reads in 10 miss part of it)."""
    bs, out, markers, group = broker.bootstrap, f"{unique}.out", f"{unique}.ep", f"{unique}-g"
    producers, epochs = 4, 30
    create_topic(bs, out, 4)
    create_topic(bs, markers, 2 * producers)
    missed: list[tuple[int, int, list[int]]] = []
    errors: list[BaseException] = []

    def commit_epochs(w: int) -> None:
        try:
            src = _consumer(bs, group)
            p = Producer({"bootstrap.servers": bs, "transactional.id": f"{unique}-{w}"})
            p.init_transactions(30)
            mine = [(markers, 2 * w), (markers, 2 * w + 1)]
            for e in range(1, epochs + 1):
                p.begin_transaction()
                for k in range(20):
                    p.produce(out, b"x" * 50, b"%d" % k)
                p.send_offsets_to_transaction(
                    [TopicPartition(t, q, e) for t, q in mine], src.consumer_group_metadata()
                )
                p.commit_transaction()
                wait_committed(src, {tp: e for tp in mine}, timeout=20)
                reader = _consumer(bs, group)
                got = [tp.offset for tp in reader.committed([TopicPartition(*tp) for tp in mine])]
                reader.close()
                if got != [e, e]:
                    missed.append((w, e, got))
            src.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit_epochs, args=(w,)) for w in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not missed, missed
