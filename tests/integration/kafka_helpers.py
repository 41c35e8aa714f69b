"""Small, real Kafka helpers for integration tests (produce inputs, read whole topics)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from raystream.generate.produce import produce_records


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None


def create_topic(bootstrap: str, topic: str, partitions: int, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1, config=config)]).values():
        fut.result()


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    return produce_records(bootstrap, topic, records)


def produce_json(bootstrap: str, topic: str, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
    return produce(bootstrap, topic, ((k.encode(), json.dumps(v).encode()) for k, v in rows))


def read_all(bootstrap: str, topic: str, timeout: float = 120) -> list[Msg]:
    """Every record of ``topic``, partition by partition in offset order: read until every
    partition reports its end (the fetch high watermark), never cut short by a pause in
    fetching, which a loaded machine makes long."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    assert topic in md.topics, f"topic {topic} does not exist"
    n = len(md.topics[topic].partitions)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # Every record, as the log holds it: the exactly-once tests decide what is committed
            # with their own model (eos_model.py), so the broker's last-stable-offset bookkeeping
            # (open or stray transactions) can never hide records from them.
            "isolation.level": "read_uncommitted",
        }
    )
    out: list[Msg] = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(n)])
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(eof) < n and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == -191:  # _PARTITION_EOF
                        eof.add(m.partition())
                    continue
                eof.discard(m.partition())
                out.append(
                    Msg(
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        m.timestamp()[1],
                        {k: (v or b"").decode() for k, v in (m.headers() or [])},
                    )
                )
        if len(eof) < n:
            raise AssertionError(
                f"read_all({topic!r}): partitions {sorted(set(range(n)) - eof)} did not reach "
                f"their end within {timeout}s ({len(out)} records read)"
            )
    finally:
        c.close()
    out.sort(key=lambda m: (m.partition, m.offset))
    return out
