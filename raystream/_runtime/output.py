"""The worker's way out to Kafka: a producer that never loses a record it accepted.

Delivery failures are collected (librdkafka reports only errors, so the common path costs nothing)
and raised at :meth:`OutputSink.flush`, before any input offset is committed.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from confluent_kafka import KafkaError as _RdKafkaError
from confluent_kafka import Producer

from raystream._kafka.clients import producer
from raystream._kafka.headers import Headers
from raystream.config import KafkaConfig
from raystream.errors import KafkaError


class Sink(Protocol):
    """Where a task's output records go."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        timestamp: int,
        headers: Headers | None,
    ) -> None:
        """Queue one record for ``topic``."""


class OutputSink:
    """Produces records and reports failed deliveries at flush time."""

    def __init__(self, cfg: KafkaConfig, **extra: Any) -> None:
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self.producer: Producer = producer(cfg, on_delivery_error=self._on_error, **extra)
        self.sent = 0

    def _on_error(self, err: _RdKafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        timestamp: int,
        headers: Headers | None,
    ) -> None:
        """Queue one record; waits for room when librdkafka's queue is full."""
        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, timestamp=timestamp, headers=headers
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1

    def poll(self) -> None:
        """Serve delivery reports without blocking."""
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued record is acknowledged; raise if any delivery failed."""
        remaining = self.producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise KafkaError(
                f"{len(errors)} output record(s) could not be delivered, e.g. {errors[0]}"
            )
        if remaining:
            raise KafkaError(f"{remaining} output record(s) still unacknowledged after {timeout}s")
