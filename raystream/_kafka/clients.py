"""librdkafka client settings, kept in one place; confluent-kafka is used only under ``_kafka``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, Producer

from raystream.config import KafkaConfig

log = logging.getLogger("raystream.kafka")


def consumer(cfg: KafkaConfig, group_id: str, **extra: Any) -> Consumer:
    """A consumer for manual ``assign()`` (never ``subscribe()``: see BROKER.md quirk 1)."""
    return Consumer(consumer_config(cfg, group_id, **extra))


def consumer_config(cfg: KafkaConfig, group_id: str, **extra: Any) -> dict[str, Any]:
    """The settings of :func:`consumer`: raystream's, then ``extra``, then ``cfg.consumer``."""
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.brokers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 50,
        "queued.min.messages": 100_000,
        # Positions are always assigned explicitly (RuntimeConfig.auto_offset_reset picks them
        # for partitions without a committed offset), so this only decides where a position
        # outside the log goes. "Earliest" is the least loss: offset 0 on a topic whose head
        # retention deleted (a stream from the start, a table's bootstrap, a dead-letter read)
        # starts at the oldest record kept, where librdkafka's default ("largest") would skip
        # every record kept.
        "auto.offset.reset": "earliest",
        "log_level": 3,
        "logger": log,
    }
    conf.update(extra)
    conf.update(cfg.consumer)
    return conf


def producer(cfg: KafkaConfig, on_delivery_error: Any = None, **extra: Any) -> Producer:
    """An idempotent producer with Java-compatible key partitioning (murmur2)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.brokers,
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "none",
        "partitioner": "murmur2_random",
        "log_level": 3,
        "logger": log,
    }
    if on_delivery_error is not None:
        conf["on_delivery"] = on_delivery_error
        conf["delivery.report.only.error"] = True
    conf.update(extra)
    conf.update(cfg.producer)
    return Producer(conf)


def admin_conf(cfg: KafkaConfig) -> Mapping[str, Any]:
    """Settings for an AdminClient."""
    return {"bootstrap.servers": cfg.brokers, "log_level": 3, "logger": log, **cfg.admin}
