"""Test your topology without Kafka or Ray, as Kafka Streams' TopologyTestDriver does.

    driver = TopologyTestDriver(app)
    driver.pipe("payments", [{"id": 1, "amount": 5}], keys=["c1"])
    assert [r.value for r in driver.read("payments.big")] == [...]

Records go through the same task code the workers run (decode, operators, encode), one task per
partition, so dead letters, keys and timestamps behave as in production.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raystream._kafka import headers as hdr
from raystream._kafka.headers import Headers
from raystream._runtime.task import Incoming, TaskRunner
from raystream.app import App
from raystream.errors import TopologyError
from raystream.serde import encode_key
from raystream.topology.plan import TaskId


@dataclass(frozen=True)
class Record:
    """An output record as it would be written to Kafka."""

    topic: str
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict[str, str]

    def json(self) -> Any:
        """The value parsed as JSON."""
        return None if self.value is None else json.loads(self.value)


class _MemorySink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        timestamp: int,
        headers: Headers | None,
    ) -> None:
        h = {k: v.decode() if isinstance(v, bytes) else (v or "") for k, v in headers or []}
        self.records.append(Record(topic, key, value, timestamp, h))


class TopologyTestDriver:
    """Runs an app's topology in this process, fed by :meth:`pipe`, read with :meth:`read`."""

    def __init__(self, app: App, partitions: int = 1, clock_ms: int = 0) -> None:
        self.app = app
        self.plan = app.plan()
        self.partitions = partitions
        self._sink = _MemorySink()
        self._clock = clock_ms
        self._offsets: dict[tuple[str, int], int] = {}
        self._tasks: dict[TaskId, TaskRunner] = {}
        self._read: dict[str, int] = {}
        self._forwarded = 0
        dlq = app.config.dlq_topic
        for task in self.plan.tasks({t: partitions for t in self.plan.source_topics()}):
            self._tasks[task] = TaskRunner(
                app.name,
                task,
                self.plan,
                self._sink,
                dlq_topic=lambda topic: dlq.format(topic=topic),
                provenance=functools.partial(hdr.provenance, str(task), 0, 0),
                clock_ms=lambda: self._clock,
            )

    def pipe(
        self,
        topic: str,
        values: Sequence[Any],
        *,
        keys: Sequence[Any] | None = None,
        timestamps: Sequence[int] | None = None,
        partition: int = 0,
    ) -> None:
        """Feed records to ``topic`` (one micro-batch). Dicts and lists are JSON-encoded, str is
        UTF-8; bytes and None are passed as they are."""
        subs = [
            st
            for st in self.plan.subtopologies
            if topic in st.source_topics or topic in st.global_topics
        ]
        if not subs:
            raise TopologyError(f"no stream reads topic {topic!r}")
        if not 0 <= partition < self.partitions:
            raise TopologyError(f"partition {partition} out of range 0..{self.partitions - 1}")
        n = len(values)
        start = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = start + n
        incoming = Incoming(
            topic,
            [_encode_value(v) for v in values],
            [encode_key(k) for k in keys] if keys is not None else [None] * n,
            list(timestamps) if timestamps is not None else [self._clock] * n,
            list(range(start, start + n)),
            partition,
        )
        for st in subs:
            if topic in st.global_topics:  # a global table reaches every task
                for task_id, task in self._tasks.items():
                    if task_id.subtopology == st.id:
                        task.process(incoming)
            else:
                self._tasks[TaskId(st.id, partition)].process(incoming)
        self._forward_internal()

    def _forward_internal(self) -> None:
        """Feed records written to repartition topics to the sub-topologies reading them, as
        the broker would (partitioned by key)."""
        internal = self.plan.internal_topics()
        while True:
            batch = [
                (i, r)
                for i, r in enumerate(self._sink.records)
                if r.topic in internal and i >= self._forwarded
            ]
            self._forwarded = len(self._sink.records)
            if not batch:
                return
            by_partition: dict[tuple[str, int], list[Record]] = {}
            for _, r in batch:
                p = zlib.crc32(r.key or b"") % self.partitions
                by_partition.setdefault((r.topic, p), []).append(r)
            for (topic, p), recs in by_partition.items():
                self.pipe(
                    topic,
                    [r.value for r in recs],
                    keys=[r.key for r in recs],
                    timestamps=[r.timestamp for r in recs],
                    partition=p,
                )

    def finish(self) -> None:
        """End of input: every task closes its windows (as a bounded run does at its end)."""
        for task in self._tasks.values():
            task.finish()
        self._forward_internal()

    def advance_time(self, ms: int) -> None:
        """Move the processing-time clock forward by ``ms``: processing-time timers that became
        due fire; with the app's ``idle_timeout_ms`` set, tasks idle that long let event time
        follow, as the workers do."""
        self._clock += ms
        idle = self.app.config.idle_timeout_ms
        for task in self._tasks.values():
            if idle is not None:
                task.check_idle(idle)
            task.tick()
        self._forward_internal()

    def advance_watermark(self, watermark: int) -> None:
        """Tell every task that event time reached ``watermark``."""
        for task in self._tasks.values():
            task.advance_watermark(watermark)
        self._forward_internal()

    def read(self, topic: str) -> list[Record]:
        """Records written to ``topic`` since the last read of it."""
        recs = [r for r in self._sink.records if r.topic == topic]
        seen = self._read.get(topic, 0)
        self._read[topic] = len(recs)
        return recs[seen:]

    def read_values(self, topic: str) -> list[Any]:
        """The JSON values written to ``topic`` since the last read of it."""
        return [r.json() for r in self.read(topic)]


def _encode_value(v: Any) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    return json.dumps(v, separators=(",", ":")).encode()
