"""The librdkafka settings raystream's consumers get."""

from __future__ import annotations

from confluent_kafka import Consumer

from raystream._kafka.clients import consumer_config
from raystream.config import KafkaConfig


def test_a_position_outside_the_log_goes_to_the_oldest_record_kept() -> None:
    # librdkafka's own default is "largest": offset 0 on a topic whose head retention deleted
    # would skip every record still in the log (a stream read from the start, a table's
    # bootstrap, a dead-letter read).
    conf = consumer_config(KafkaConfig("127.0.0.1:9"), "app")
    assert conf["auto.offset.reset"] == "earliest"
    Consumer(conf).close()  # librdkafka accepts the settings


def test_the_users_consumer_settings_win() -> None:
    cfg = KafkaConfig("127.0.0.1:9", consumer={"auto.offset.reset": "error"})
    conf = consumer_config(cfg, "app", **{"fetch.wait.max.ms": 10})
    assert conf["auto.offset.reset"] == "error"
    assert conf["fetch.wait.max.ms"] == 10
    assert conf["isolation.level"] == "read_committed"
