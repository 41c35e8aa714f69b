"""Overlapped exactly-once commits (raystream._runtime.pipeline): two transactional producers
taking turns, one committing an epoch in the background while the other takes the next."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from raystream._runtime.output import OutputSink
from raystream._runtime.pipeline import PipelinedOutput
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker
from raystream.errors import ProducerFencedError

from .kafka_helpers import create_topic


def _pipelined(bs: str, txn_id: str, pad_topic: str) -> PipelinedOutput:
    out = PipelinedOutput(
        lambda tid: OutputSink(KafkaConfig(bs), transactional_id=tid, pad_topic=pad_topic),
        txn_id,
    )
    out.start_transactions()
    return out


def _read_committed(bs: str, topic: str, expect: int) -> list[dict[str, int]]:
    c = Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": f"{topic}-reader",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
    )
    c.assign([TopicPartition(topic, 0, -2)])
    got: list[dict[str, int]] = []
    try:
        for _ in range(200):
            got += [json.loads(m.value()) for m in c.consume(1000, 0.1) if m.error() is None]
            if len(got) >= expect:
                break
    finally:
        c.close()
    return got


def test_epochs_overlap_yet_land_and_commit_in_order(broker: EmbeddedBroker, unique: str) -> None:
    bs = broker.bootstrap
    src, out_topic, pad = f"{unique}.in", f"{unique}.out", f"{unique}.pad"
    for t in (src, out_topic, pad):
        create_topic(bs, t, 1)
    group = f"{unique}-app"
    meta = Consumer({"bootstrap.servers": bs, "group.id": group})
    out = _pipelined(bs, f"{group}-0", pad)
    try:
        for epoch in range(1, 6):
            # Records of this epoch go out while the previous epoch's commit may still run.
            for i in range(100):
                out.send(out_topic, json.dumps({"e": epoch, "i": i}).encode(), None, 0, None)
            out.settle()
            out.flush()
            out.commit_epoch([TopicPartition(src, 0, 10 * epoch)], meta.consumer_group_metadata())
            assert out.committing
        out.settle()
        assert not out.committing
        got = _read_committed(bs, out_topic, 500)
        assert [(r["e"], r["i"]) for r in got] == [(e, i) for e in range(1, 6) for i in range(100)]
        (tp,) = meta.committed([TopicPartition(src, 0)], 10)
        assert tp.offset == 50
    finally:
        out.abort()
        meta.close()


def test_a_failed_background_commit_is_raised_by_settle(
    broker: EmbeddedBroker, unique: str
) -> None:
    bs = broker.bootstrap
    src, pad = f"{unique}.in", f"{unique}.pad"
    create_topic(bs, src, 1)
    create_topic(bs, pad, 1)
    group = f"{unique}-app"
    meta = Consumer({"bootstrap.servers": bs, "group.id": group})
    old = _pipelined(bs, f"{group}-0", pad)
    newer = _pipelined(bs, f"{group}-0", pad)  # fences both of the old instance's producers
    try:
        for _ in range(2):  # each of the old instance's two producers in turn
            old.flush()
            old.commit_epoch([TopicPartition(src, 0, 7)], meta.consumer_group_metadata())
            with pytest.raises(ProducerFencedError):
                old.settle()
            assert not old.committing
        (tp,) = meta.committed([TopicPartition(src, 0)], 10)
        assert tp.offset < 0  # nothing committed
    finally:
        old.abort()
        newer.abort()
        meta.close()
