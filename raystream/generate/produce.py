"""Write generated records to a topic, fast (one librdkafka producer, batched)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from confluent_kafka import Producer

from raystream.errors import KafkaError


def produce_records(
    brokers: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    progress: Callable[[int], None] | None = None,
    linger_ms: int = 5,
) -> int:
    """Produce ``(key, value)`` pairs to ``topic``; returns how many were acknowledged.
    ``linger_ms`` is how long the producer gathers records into one request."""
    failed: list[str] = []

    def on_error(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": linger_ms,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "on_delivery": on_error,
            "delivery.report.only.error": True,
            "log_level": 3,
        }
    )
    n = 0
    for key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
            if progress is not None:
                progress(n)
    remaining = p.flush(60)
    if failed or remaining:
        raise KafkaError(
            f"{len(failed) + remaining} of {n} records to {topic!r} were not delivered"
            + (f": {failed[0]}" if failed else "")
        )
    if progress is not None and n % 10_000:
        progress(n)
    return n
