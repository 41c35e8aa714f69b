"""The worker's fetch returns as soon as a record is ready, instead of waiting out its timeout
for a full batch (which added the whole poll timeout to every record's latency)."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition

from raystream._kafka.clients import consumer as make_consumer
from raystream._kafka.fetch import fetch_ready
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic


def test_fetch_returns_what_is_ready_without_waiting_for_a_full_batch(
    broker: EmbeddedBroker, unique: str
) -> None:
    bs, topic = broker.bootstrap, f"{unique}.fetch"
    create_topic(bs, topic, 1)
    c = make_consumer(KafkaConfig(bs), group_id=unique)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        started = time.monotonic()
        assert fetch_ready(c, 10_000, 0.5) == []  # nothing there: waits out the timeout
        assert time.monotonic() - started >= 0.4
        p = Producer({"bootstrap.servers": bs})
        for i in range(3):
            p.produce(topic, value=b"%d" % i)
        p.flush(10)
        started = time.monotonic()
        got = []
        while len(got) < 3 and time.monotonic() - started < 30:
            got += fetch_ready(c, 10_000, 30.0)
        # Three records, not 10,000, and long before the 30 s timeout.
        assert [m.value() for m in got] == [b"0", b"1", b"2"]
        assert time.monotonic() - started < 10
        assert fetch_ready(c, 10_000, 0) == []
    finally:
        c.close()
