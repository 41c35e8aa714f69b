"""Topics: partition counts, creation of missing output topics, end and committed offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from raystream._kafka.clients import admin_conf, consumer
from raystream.config import KafkaConfig
from raystream.errors import KafkaError, TopicNotFoundError

log = logging.getLogger("raystream.kafka")


class Topics:
    """Admin operations on the app's topics."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self._admin = AdminClient(dict(admin_conf(cfg)))

    def partitions(self, timeout: float = 10.0) -> dict[str, int]:
        """Partition count of every topic on the broker."""
        try:
            md = self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise KafkaError(
                f"cannot reach Kafka at {self.cfg.brokers}: {exc}; is the broker running?"
            ) from exc
        return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}

    def require(self, topics: Iterable[str]) -> dict[str, int]:
        """Partition counts of ``topics``; raises TopicNotFoundError naming the missing ones."""
        existing = self.partitions()
        missing = sorted(t for t in topics if t not in existing)
        if missing:
            raise TopicNotFoundError(
                f"input topic(s) {missing} do not exist on {self.cfg.brokers}: create them "
                "(raystream never creates the topics it reads) or fix the topic name"
            )
        return {t: existing[t] for t in topics}

    def ensure(self, wanted: Mapping[str, int], configs: Mapping[str, str] | None = None) -> None:
        """Create the topics in ``wanted`` (name -> partitions) that do not exist yet."""
        existing = self.partitions()
        new = [
            NewTopic(t, num_partitions=n, replication_factor=1, config=dict(configs or {}))
            for t, n in wanted.items()
            if t not in existing
        ]
        if not new:
            return
        for topic, fut in self._admin.create_topics(new).items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a race, fine
                    continue
                raise KafkaError(f"cannot create topic {topic!r}: {exc}") from exc


def end_offsets(
    cfg: KafkaConfig, partitions: Iterable[tuple[str, int]], timeout: float = 15.0
) -> dict[tuple[str, int], int]:
    """The high watermark of each partition, as a fetch response reports it.

    ListOffsets("latest") answers wrong on the embedded broker when the last batch holds several
    records (BROKER.md quirk 3), so this fetches from just before that answer and reads the high
    watermark that comes back with the fetch, taking the larger of the two.
    """
    tps = list(partitions)
    if not tps:
        return {}
    c = consumer(cfg, group_id="raystream-end-offsets", **{"fetch.wait.max.ms": 10})
    try:
        listed: dict[tuple[str, int], int] = {}
        for t, p in tps:
            try:
                _, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout)
            except KafkaException as exc:
                raise KafkaError(f"cannot read end offsets of {t}[{p}]: {exc}") from exc
            listed[(t, p)] = max(high, 0)
        probe = [TopicPartition(t, p, listed[(t, p)] - 1) for t, p in tps if listed[(t, p)] > 0]
        result = dict(listed)
        if not probe:
            return result
        c.assign(probe)
        pending = {(tp.topic, tp.partition) for tp in probe}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            c.consume(num_messages=10_000, timeout=0.1)
            for t, p in list(pending):
                _, high = c.get_watermark_offsets(TopicPartition(t, p), cached=True)
                if high >= 0:
                    result[(t, p)] = max(result[(t, p)], high)
                    pending.discard((t, p))
        if pending:
            raise KafkaError(f"no fetch answer for {sorted(pending)} within {timeout}s")
        return result
    finally:
        c.close()


def committed_offsets(
    cfg: KafkaConfig, group_id: str, partitions: Iterable[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition (None where nothing is committed)."""
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    c = consumer(cfg, group_id=group_id)
    try:
        got = c.committed(tps, timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot read committed offsets of group {group_id!r}: {exc}") from exc
    finally:
        c.close()
    return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in got}


def wait_committed(
    c: Consumer,
    want: Mapping[tuple[str, int], int],
    timeout: float = 30.0,
    what: str = "",
    nudge: Callable[[], None] | None = None,
    nudge_after: float = 1.0,
) -> None:
    """Block until the group of consumer ``c`` reads a committed offset of at least ``want``
    for every partition; raises KafkaError naming the ones behind after ``timeout`` seconds.

    A transaction's offsets can become readable a little after ``commit_transaction``
    returns, one partition at a time: Apache Kafka writes the commit markers after answering.
    The embedded broker may hold them much longer, or for good: it applies a transaction's
    offsets only once every other open transaction that wrote to the same partitions has
    ended too, and a commit that had to wait can be left behind when those end (measured:
    README, "embedded broker"). ``nudge`` (writing the same offsets again) is called when they
    are still behind ``nudge_after`` seconds on, then after twice as long, and so on. Reading
    one's own commit back is the only way to know that a reader now sees all of it."""
    tps = [TopicPartition(t, p) for t, p in want]
    if not tps:
        return
    start = time.monotonic()
    deadline = start + timeout
    nudge_at, wait = start + nudge_after, nudge_after
    while True:
        try:
            got = c.committed(tps, timeout=timeout)
        except KafkaException as exc:
            raise KafkaError(f"cannot read committed offsets: {exc}") from exc
        behind = [
            f"{tp.topic}[{tp.partition}] at {tp.offset}, not {need}"
            for tp in got
            if tp.offset < (need := want[(tp.topic, tp.partition)])
        ]
        if not behind:
            return
        now = time.monotonic()
        if now > deadline:
            raise KafkaError(
                f"{what or 'a commit'} is not readable after {timeout:.0f}s "
                f"({', '.join(behind[:3])}); is the broker healthy?"
            )
        if nudge is not None and now >= nudge_at:
            log.info(
                "%s not readable after %.1fs: writing its offsets again",
                what or "a commit",
                now - start,
            )
            nudge()
            wait *= 2
            nudge_at = time.monotonic() + wait
        time.sleep(0.005)
