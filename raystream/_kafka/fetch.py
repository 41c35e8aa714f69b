"""Taking what a consumer has ready, without waiting for a full batch."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer


def fetch_ready(consumer: Consumer, max_records: int, timeout: float) -> list[Any]:
    """The records ready now (up to ``max_records``); when there are none, the first to arrive
    within ``timeout`` and those ready behind it. Returns as soon as any record is ready:
    ``consume(n, timeout)`` alone waits out the whole timeout unless ``n`` records are ready,
    which added up to the poll timeout to every record's latency."""
    msgs: list[Any] = consumer.consume(max_records, 0)
    if msgs or timeout <= 0:
        return msgs
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
