"""The gap audit against the embedded broker: a record inside a range the consumer skipped
fails the check; a range that only a transaction marker filled passes it. (Which offsets a
consumer is handed is given here as the worker would have noted them; the broker fault that
makes a consumer skip a stored batch is a race, ``python -m bench.broker_probe --probe tail``.)"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer, TopicPartition

from raystream._kafka.clients import consumer as make_consumer
from raystream._runtime.gaps import GapAudit, PassedOverError, broker_may_pass_over
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic


def _audit(bs: str, group: str) -> GapAudit:
    return GapAudit(
        lambda: make_consumer(KafkaConfig(bs), group_id=group, **{"fetch.wait.max.ms": 5}),
        timeout_s=20,
    )


def _handed(bs: str, topic: str, group: str) -> list[int]:
    """The offsets a read_committed consumer is handed, reading the whole partition."""
    c = make_consumer(KafkaConfig(bs), group_id=group)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        out: list[int] = []
        for _ in range(100):
            out += [int(m.offset() or 0) for m in c.consume(1000, 0.1) if m.error() is None]
            if len(out) >= 5:
                break
        return out
    finally:
        c.close()


def test_the_embedded_broker_is_recognised(broker: EmbeddedBroker, unique: str) -> None:
    create_topic(broker.bootstrap, f"{unique}.any", 1)
    c = make_consumer(KafkaConfig(broker.bootstrap), group_id=unique)
    try:
        assert broker_may_pass_over(c, f"{unique}.any")
    finally:
        c.close()


def test_a_record_in_a_skipped_range_fails_the_check(broker: EmbeddedBroker, unique: str) -> None:
    bs, topic = broker.bootstrap, f"{unique}.gaps"
    create_topic(bs, topic, 1)
    p = Producer({"bootstrap.servers": bs})
    for i in range(10):
        p.produce(topic, b"%d" % i, partition=0)
    p.flush(30)
    audit = _audit(bs, unique)
    try:
        # The consumer was handed 0-2 and 6-9: 3, 4 and 5 were passed over.
        audit.note((topic, 0), 0, [0, 1, 2, 6, 7, 8, 9])
        with pytest.raises(PassedOverError, match=r"offsets \[3, 4, 5\]"):
            audit.check()
        assert audit.found == 3
        with pytest.raises(PassedOverError):  # the attempt is over: it keeps failing
            audit.check()
    finally:
        audit.close()


def test_a_range_only_markers_filled_passes(broker: EmbeddedBroker, unique: str) -> None:
    bs, topic = broker.bootstrap, f"{unique}.markers"
    create_topic(bs, topic, 1)
    p = Producer({"bootstrap.servers": bs, "transactional.id": unique})
    p.init_transactions(30)
    for batch in ([b"a", b"b", b"c"], [b"d", b"e"]):
        p.begin_transaction()
        for v in batch:
            p.produce(topic, v, partition=0)
        p.commit_transaction(30)
    handed = _handed(bs, topic, unique)
    assert len(handed) == 5 and handed != list(range(5))  # the first commit marker sits between
    audit = _audit(bs, unique)
    try:
        audit.note((topic, 0), 0, handed)
        audit.note_jump((topic, 0), handed[-1] + 1, handed[-1] + 2)  # the last marker
        audit.check()
        assert audit.checked == 2 and audit.found == 0
        assert not audit.gaps
    finally:
        audit.close()
