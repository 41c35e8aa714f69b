"""A job on the embedded broker loses no input when several producers write its input
partition at once: the broker (Tansu 0.6.0) can let a tailing consumer pass over a batch
(``python -m bench.broker_probe --probe tail``), and the worker's gap audit
(raystream/_runtime/gaps.py) catches that before the epoch commits and reads again."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

import raystream as rs
from raystream._kafka.admin import wait_committed
from raystream._kafka.clients import consumer as make_consumer
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic, read_all

PRODUCERS = 4
SECONDS = 6.0


def _write(bs: str, topic: str, i: int, sent: list[int]) -> None:
    """Transactions of 5 records, 1 ms apart, for SECONDS: the load at which the probe's
    follower passed over a batch in about half of its 10-15 s runs (and this job, without the
    audit, in 1 run of 3)."""
    p = Producer({"bootstrap.servers": bs, "transactional.id": f"{topic}-{i}", "linger.ms": 1})
    p.init_transactions(30)
    end, n = time.monotonic() + SECONDS, 0
    while time.monotonic() < end:
        p.begin_transaction()
        for _ in range(5):
            p.produce(topic, b"%d-%d" % (i, n), partition=0)
            n += 1
        p.commit_transaction(30)
        time.sleep(0.001)
    sent[i] = n


def test_no_input_is_lost_to_concurrent_producers(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    bs, src, out = broker.bootstrap, f"{unique}.in", f"{unique}.out"
    create_topic(bs, src, 1)
    create_topic(bs, out, 1)
    app = rs.App(
        unique,
        brokers=bs,
        commit_interval_ms=100,
        poll_timeout_ms=5,
        consumer_config={"fetch.wait.max.ms": 5},
    )
    app.stream(src, value=rs.String()).map(lambda r: {"v": r["value"]}).to(out)
    running = app.start(workers=1)
    sent = [0] * PRODUCERS
    try:
        writers = [
            threading.Thread(target=_write, args=(bs, src, i, sent)) for i in range(PRODUCERS)
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        last = max(m.offset for m in read_all(bs, src))
        reader = make_consumer(KafkaConfig(bs), group_id=unique)  # the app's group
        try:
            wait_committed(reader, {(src, 0): last + 1}, timeout=120, what="the job's commit")
        finally:
            reader.close()
    finally:
        result = running.stop()
    total = sum(sent)
    assert result.records_in == total
    values = {m.json()["v"] for m in read_all(bs, out)}
    assert values == {f"{i}-{n}" for i in range(PRODUCERS) for n in range(sent[i])}
