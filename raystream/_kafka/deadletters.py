"""Dead-letter topics: find them, read their records with the reasons, replay them.

A dead letter is the original record (bytes and key) with headers saying why it failed and where
it came from (:mod:`raystream._kafka.headers`). Reading stops at each partition's end as the fetch
response reports it (partition EOF), not at ListOffsets' answer (BROKER.md quirk 3). Replay writes
a record back to its source topic and partition with its original key, value and timestamp and an
``rs.replayed.from`` header naming the dead letter.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError as _RdKafkaError
from confluent_kafka import KafkaException, TopicPartition

from raystream._kafka import headers as hdr
from raystream._kafka.admin import Topics
from raystream._kafka.clients import consumer, producer
from raystream.config import KafkaConfig
from raystream.errors import ConfigError, KafkaError, TopicNotFoundError


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict[str, str]

    @property
    def error_class(self) -> str:
        """The class of the error that sent the record here."""
        return self.headers.get(hdr.DLQ_ERROR_CLASS, "?")

    @property
    def operator(self) -> str:
        """The operator that refused the record (``decode`` for undecodable input)."""
        return self.headers.get(hdr.DLQ_OPERATOR, "?")

    @property
    def source(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) the record was read from; None if the headers lack it."""
        try:
            return (
                self.headers[hdr.DLQ_TOPIC],
                int(self.headers[hdr.DLQ_PARTITION]),
                int(self.headers[hdr.DLQ_OFFSET]),
            )
        except (KeyError, ValueError):
            return None

    @property
    def replayable(self) -> bool:
        """Whether the original bytes are here and the source is known."""
        return hdr.DLQ_VALUE_OMITTED not in self.headers and self.source is not None

    @property
    def where(self) -> str:
        """``topic[partition]@offset`` of this dead letter (the ``rs.replayed.from`` value)."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Filter:
    """Which dead letters to take: error class (exact, or the last dotted part), operator,
    partition and an inclusive offset range of the dead-letter topic."""

    error_class: str | None = None
    operator: str | None = None
    partition: int | None = None
    from_offset: int = 0
    to_offset: int | None = None

    def __post_init__(self) -> None:
        if self.from_offset < 0 or (self.to_offset is not None and self.to_offset < 0):
            raise ConfigError("--from-offset/--to-offset: offsets must be >= 0")
        if self.to_offset is not None and self.to_offset < self.from_offset:
            raise ConfigError(
                f"--to-offset {self.to_offset} is before --from-offset {self.from_offset}"
            )

    def matches(self, d: DeadLetter) -> bool:
        """Whether ``d`` passes the filter."""
        if self.partition is not None and d.partition != self.partition:
            return False
        if d.offset < self.from_offset or (
            self.to_offset is not None and d.offset > self.to_offset
        ):
            return False
        if self.operator is not None and d.operator != self.operator:
            return False
        if self.error_class is not None:
            cls = d.error_class
            return cls == self.error_class or cls.rsplit(".", 1)[-1] == self.error_class
        return True


def dead_letter_topics(cfg: KafkaConfig, dlq_topic: str = "{topic}.dlq") -> dict[str, int]:
    """Topics on the broker named like ``dlq_topic`` (``{topic}`` is any source topic), with
    their partition counts."""
    if "{topic}" not in dlq_topic:
        raise ConfigError("--dlq-format: must contain '{topic}', e.g. '{topic}.dlq'")
    before, _, after = dlq_topic.partition("{topic}")
    pattern = re.compile(f"^{re.escape(before)}.+{re.escape(after)}$")
    return {t: n for t, n in sorted(Topics(cfg).partitions().items()) if pattern.match(t)}


def read(
    cfg: KafkaConfig,
    topic: str,
    where: Filter | None = None,
    limit: int | None = None,
    timeout: float = 60.0,
) -> Iterator[DeadLetter]:
    """The dead letters of ``topic`` that pass ``where``, partition by partition in offset
    order, up to each partition's end at the time of reading (at most ``limit``)."""
    where = where or Filter()
    parts = Topics(cfg).partitions()
    if topic not in parts:
        raise TopicNotFoundError(
            f"dead-letter topic {topic!r} does not exist on {cfg.brokers}; "
            "`raystream dlq list` shows the ones that do"
        )
    wanted = [p for p in range(parts[topic]) if where.partition in (None, p)]
    c = consumer(cfg, group_id="raystream-dlq-reader", **{"enable.partition.eof": True})
    taken = 0
    try:
        c.assign([TopicPartition(topic, p, where.from_offset) for p in wanted])
        pending = set(wanted)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"reading {topic!r}: no end reached on partitions {sorted(pending)} "
                    f"within {timeout:.0f}s; is the broker up?"
                )
            batch: list[DeadLetter] = []
            for m in c.consume(10_000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == _RdKafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise KafkaError(f"reading {topic!r}: {err}")
                part, off = m.partition() or 0, m.offset() or 0
                if part not in pending:
                    continue
                if where.to_offset is not None and off > where.to_offset:
                    pending.discard(part)
                    continue
                raw: Any = m.headers()
                batch.append(
                    DeadLetter(
                        topic, part, off, m.key(), m.value(), m.timestamp()[1], hdr.as_dict(raw)
                    )
                )
            for d in sorted(batch, key=lambda d: (d.partition, d.offset)):
                if where.matches(d):
                    yield d
                    taken += 1
                    if limit is not None and taken >= limit:
                        return
    except KafkaException as exc:
        raise KafkaError(f"reading {topic!r}: {exc}") from exc
    finally:
        c.close()


def replay(
    cfg: KafkaConfig,
    letters: list[DeadLetter],
    progress: Callable[[int, int], None] | None = None,
    to_topic: str | None = None,
) -> int:
    """Write each replayable dead letter back to its source topic and partition (or to
    ``to_topic``, partitioned by key); returns how many were written and acknowledged."""
    failed: list[str] = []

    def on_error(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    p = producer(cfg, on_delivery_error=on_error)
    todo = [d for d in letters if d.replayable]
    for i, d in enumerate(todo, 1):
        src = d.source
        assert src is not None
        topic, partition, _ = src
        # Back to the partition it came from (its task), unless it goes to another topic.
        kwargs: dict[str, Any] = {"partition": partition} if to_topic is None else {}
        ts = d.headers.get(hdr.DLQ_TIMESTAMP, "")
        while True:
            try:
                p.produce(
                    to_topic or topic,
                    value=d.value,
                    key=d.key,
                    timestamp=int(ts) if ts.isdigit() and int(ts) > 0 else 0,
                    headers=[(hdr.REPLAYED_FROM, d.where.encode())],
                    **kwargs,
                )
                break
            except BufferError:
                p.poll(0.05)
            except KafkaException as exc:
                raise KafkaError(f"replaying {d.where} to {to_topic or topic!r}: {exc}") from exc
        if progress is not None and (i % 1000 == 0 or i == len(todo)):
            p.poll(0)
            progress(i, len(todo))
    remaining = p.flush(60)
    if failed or remaining:
        raise KafkaError(
            f"{len(failed) + remaining} of {len(todo)} replayed records were not delivered"
            + (f", e.g. {failed[0]}" if failed else "")
            + "; nothing was removed from the dead-letter topic: check the broker and replay "
            "again (the records that did get through would then be written twice)"
        )
    return len(todo)
