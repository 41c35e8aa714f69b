"""The worker's way out to Kafka: a producer that never loses a record it accepted.

Delivery failures are collected (librdkafka reports only errors, so the common path costs nothing)
and raised at :meth:`OutputSink.flush`, before any input offset is committed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError as _RdKafkaError
from confluent_kafka import KafkaException, Producer

from raystream._kafka.clients import producer
from raystream._kafka.headers import Headers
from raystream.config import KafkaConfig
from raystream.errors import KafkaError, ProducerFencedError, RecordTooLargeError

#: ``partition`` for ``Producer.produce``: let the partitioner choose by key.
_ANY = -1
# ``produce`` is called with positional arguments only: (topic, value, key, partition,
# on_delivery, callback, timestamp, headers). confluent-kafka parses keywords ~0.9 us slower a
# call (1.27 against 2.22 us with three headers), which was 7% of an enrichment's worker CPU.
# None for both callbacks means the producer's own ``on_delivery`` (raystream's error hook).


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
    """Produces records and reports failed deliveries at flush time.

    With ``transactional_id`` the records of each epoch form one Kafka transaction:
    :meth:`start_transactions` once (fences an older producer with the same id), then
    :meth:`commit_epoch` at every epoch end.

    ``pad_topic``: a transaction that would commit offsets without any record gets one empty
    record (keyed by the transactional id) on partition 0 of that topic. The embedded broker
    drops the offsets of record-less transactions after a producer's first one (BROKER.md); a
    worker whose tasks only keep state or views commits such epochs all the time.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        transactional_id: str | None = None,
        pad_topic: str | None = None,
        **extra: Any,
    ) -> None:
        self._errors: list[str] = []
        self._lock = threading.Lock()
        if transactional_id is not None:
            extra = {"transactional.id": transactional_id, **extra}
        self.transactional = transactional_id is not None
        self._txn_id = (transactional_id or "").encode()
        self._pad_topic = pad_topic
        self.producer: Producer = producer(cfg, on_delivery_error=self._on_error, **extra)
        self.sent = 0
        self._sent_at_begin = 0

    def start_transactions(self, timeout: float = 60.0) -> None:
        """Register the transactional id (fencing any older instance) and open a transaction."""
        try:
            self.producer.init_transactions(timeout)
            self.producer.begin_transaction()
            self._sent_at_begin = self.sent
        except KafkaException as exc:
            raise _txn_error("starting transactions", exc) from exc

    def commit_epoch(self, offsets: list[Any], group_metadata: Any, timeout: float = 60.0) -> None:
        """Commit the open transaction with ``offsets`` (the consumer group's new positions),
        then open the next one."""
        try:
            if self.sent == self._sent_at_begin and self._pad_topic is not None:
                self.producer.produce(self._pad_topic, value=b"", key=self._txn_id, partition=0)
            self.producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
            self.producer.commit_transaction(timeout)
            self.producer.begin_transaction()
            self._sent_at_begin = self.sent
        except KafkaException as exc:
            raise _txn_error("committing an epoch", exc) from exc

    def abort(self, timeout: float = 10.0) -> None:
        """Abort the open transaction, if any (best effort: a dead broker is not an error here)."""
        if not self.transactional:
            return
        with contextlib.suppress(KafkaException):
            self.producer.abort_transaction(timeout)

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
                self.producer.produce(topic, value, key, _ANY, None, None, timestamp, headers)
                break
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:
                raise _produce_error(topic, value, exc) from exc
        self.sent += 1

    def send_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None],
        timestamps: Sequence[int],
        headers: Headers | None,
    ) -> list[tuple[int, RecordTooLargeError]]:
        """Queue records for ``topic`` (as :meth:`send` each, in order); returns the records
        refused as too large, by index, instead of raising for them."""
        produce = self.producer.produce
        refused: list[tuple[int, RecordTooLargeError]] = []
        i = 0
        try:
            for i, (v, k, ts) in enumerate(zip(values, keys, timestamps, strict=True)):
                try:
                    produce(topic, v, k, _ANY, None, None, ts, headers)
                except BufferError:
                    try:
                        self.send(topic, v, k, ts, headers)  # waits for room
                    except RecordTooLargeError as too_big:
                        refused.append((i, too_big))
                        continue
                    self.sent -= 1  # counted below with the others
                except KafkaException as exc:
                    err = _produce_error(topic, v, exc)
                    if not isinstance(err, RecordTooLargeError):
                        raise err from exc
                    refused.append((i, err))
            i = len(values)
        finally:
            self.sent += i - len(refused)
        return refused

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


def _produce_error(topic: str, value: bytes | None, exc: KafkaException) -> KafkaError:
    err = exc.args[0] if exc.args else None
    code = err.code() if err is not None else None
    if code == _RdKafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLargeError(
            f"a record of {len(value or b'')} bytes for {topic!r} is larger than the producer's "
            "message.max.bytes: it is dead-lettered; raise message.max.bytes (and the topic's "
            "max.message.bytes) in producer_config if such records are expected"
        )
    return KafkaError(f"cannot produce to {topic!r}: {exc}")


def _txn_error(what: str, exc: KafkaException) -> KafkaError:
    err = exc.args[0] if exc.args else None
    code = err.code() if err is not None else None
    if code in (
        _RdKafkaError._FENCED,
        _RdKafkaError.PRODUCER_FENCED,
        _RdKafkaError.INVALID_PRODUCER_EPOCH,
    ):
        return ProducerFencedError(
            f"{what}: a newer instance of this worker slot took over ({exc}); this one stops"
        )
    return KafkaError(
        f"{what} failed: {exc}; the epoch is aborted and retried from the last commit"
    )
