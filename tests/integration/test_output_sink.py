"""What the output sink writes is what a reader gets back: value, key, timestamp, headers, and the
partition of the key. ``OutputSink`` calls ``Producer.produce`` with positional arguments only
(see raystream/_runtime/output.py), so a shifted argument would show here."""

from __future__ import annotations

from raystream._kafka.partitioner import partition_for
from raystream._runtime.output import OutputSink
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic, read_all


def test_records_arrive_as_sent(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"{unique}.out"
    create_topic(broker.bootstrap, topic, 4)
    sink = OutputSink(KafkaConfig(broker.bootstrap))
    headers = [("rs.task", b"0_3"), ("rs.epoch", b"12")]
    keys = [f"customer-{i}".encode() for i in range(40)]
    values: list[bytes | None] = [f'{{"n":{i}}}'.encode() for i in range(40)]
    values[7] = None  # a tombstone
    stamps = [1_700_000_000_000 + 1_000 * i for i in range(40)]
    refused = sink.send_batch(topic, values[:30], keys[:30], stamps[:30], headers)
    for v, k, ts in zip(values[30:], keys[30:], stamps[30:], strict=True):
        sink.send(topic, v, k, ts, headers)
    sink.flush(30)
    assert refused == []
    assert sink.sent == 40

    got = {m.key: m for m in read_all(broker.bootstrap, topic)}
    assert len(got) == 40
    for v, k, ts in zip(values, keys, stamps, strict=True):
        m = got[k]
        assert (m.value, m.timestamp) == (v, ts)
        assert m.headers == {"rs.task": "0_3", "rs.epoch": "12"}
        assert m.partition == partition_for(k, 4)
