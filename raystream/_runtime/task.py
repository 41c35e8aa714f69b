"""One task: the operator instances of a sub-topology for one partition, fed fetched messages.

``TaskRunner.process`` decodes a partition's messages into an Arrow batch, pushes it through the
operators (parents before children, port by port), and hands sink records and dead letters to the
worker's output :class:`Sink`. Nothing here talks to Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from raystream._kafka import headers as hdr
from raystream._runtime.output import Sink
from raystream.errors import RecordTooLargeError, SerdeError
from raystream.metrics.logcontext import bind_task, unbind_task
from raystream.operators.base import Batch, Operator, RecordFailure, TaskContext
from raystream.operators.joins_base import (
    TOMBSTONE,
    BinaryOperator,
    record_batch,
    tombstone_mask,
    value_columns,
)
from raystream.serde import encode_keys
from raystream.topology.nodes import SinkSpec, SourceSpec
from raystream.topology.plan import Plan, TaskId

log = logging.getLogger("raystream.task")

#: The watermark that closes every window: end of input in bounded runs.
END_OF_INPUT = 1 << 62


@dataclass
class Incoming:
    """The fetched records of one partition, as parallel lists."""

    topic: str
    values: list[bytes | None]
    keys: list[bytes | None]
    timestamps: list[int]
    offsets: list[int]
    #: The partition they come from (-1: the task's own partition).
    partition: int = -1


@dataclass
class TaskCounters:
    """What a task has done since it started (the worker reports them)."""

    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    by_operator_in: dict[str, int] = field(default_factory=dict)
    by_operator_out: dict[str, int] = field(default_factory=dict)
    # -- read (and drained) by raystream.metrics.worker.WorkerMetrics ----------------------
    #: Dead letters by (operator, error class); late records by operator.
    dead_by: dict[tuple[str, str], int] = field(default_factory=dict)
    late_by: dict[str, int] = field(default_factory=dict)
    #: Seconds each micro-batch took in :meth:`TaskRunner.process`, since the last report.
    batch_seconds: list[float] = field(default_factory=list)
    #: Kafka timestamps of the records processed since the last commit (end-to-end latency);
    #: at most :data:`MAX_PENDING_TIMESTAMPS` batches are kept.
    timestamps: list[list[int]] = field(default_factory=list)


#: Batches whose timestamps a task keeps for the end-to-end latency metric between commits.
MAX_PENDING_TIMESTAMPS = 256


class TaskRunner:
    """Runs one task's operators on micro-batches."""

    def __init__(
        self,
        app: str,
        task: TaskId,
        plan: Plan,
        out: Sink,
        dlq_topic: Callable[[str], str],
        provenance: Callable[[], hdr.Headers],
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.app = app
        self.task = task
        self.out = out
        self.dlq_topic = dlq_topic
        self.provenance = provenance
        self.counters = TaskCounters()
        graph = plan.graph
        sub = plan.subtopologies[task.subtopology]
        self.order = list(sub.node_ids)
        self.names = {n: graph.names[n] for n in self.order}
        self.children: dict[int, list[tuple[int, int, int]]] = {
            n: [(e.port, e.dst, e.input) for e in graph.children(n)] for n in self.order
        }
        self.sources: dict[str, list[tuple[int, SourceSpec]]] = {}
        self.sinks: dict[int, SinkSpec] = {}
        self.operators: dict[int, Operator] = {}
        self._current: Incoming | None = None
        #: offset -> index in the batch being processed, built when a failure needs it.
        self._raw_index: dict[int, int] | None = None
        self._raw: Incoming | None = None
        self._clock_ms = clock_ms
        #: Largest event time seen by this task, and when (processing time) input last came.
        self.max_event_time: int | None = None
        self.last_input_ms = clock_ms()
        self.finished = False
        #: The last epoch committed for this task (outputs carry ``epoch + 1``).
        self.epoch = 0
        #: (topic, partition) -> offset below which records were processed before a restart
        #: (tables are re-read from the start): their dead letters were written already.
        self.replayed_below: dict[tuple[str, int], int] = {}
        self.global_topics = set(sub.global_topics)
        self._task_name = str(task)
        ctx = TaskContext(
            app=app,
            task=str(task),
            partition=task.partition,
            report_failure=self._on_failure,
            clock_ms=clock_ms,
        )
        for n in self.order:
            spec = graph.nodes[n]
            if isinstance(spec, SourceSpec):
                self.sources.setdefault(spec.topic, []).append((n, spec))
            elif isinstance(spec, SinkSpec):
                self.sinks[n] = spec
            else:
                op = spec.build(self.names[n])
                op.open(ctx)
                self.operators[n] = op
        #: Late-record sinks -> the operator whose late port feeds them (for the headers).
        self.late_parent: dict[int, str] = {
            e.dst: graph.names[e.src]
            for e in graph.edges
            if e.dst in self.sinks and self.sinks[e.dst].late
        }

    # -- input -------------------------------------------------------------------------------
    def process(self, incoming: Incoming) -> None:
        """Decode and run one partition's fetched records through the operators."""
        if incoming.partition < 0:
            incoming.partition = self.task.partition
        self._current = self._raw = incoming
        self._raw_index = None
        started = time.perf_counter()
        log_token = bind_task(self._task_name)
        try:
            self.counters.records_in += len(incoming.values)
            if len(self.counters.timestamps) < MAX_PENDING_TIMESTAMPS:
                self.counters.timestamps.append(incoming.timestamps)
            self.last_input_ms = self._clock_ms()
            for node, spec in self.sources.get(incoming.topic, []):
                batch = self._decode(spec, incoming)
                if batch.num_rows:
                    top = pc.max(batch.timestamps).as_py()
                    if top is not None and (
                        self.max_event_time is None or top > self.max_event_time
                    ):
                        self.max_event_time = top
                    self._emit(node, [batch])
        finally:
            self._current = self._raw = None
            unbind_task(log_token)
            self.counters.batch_seconds.append(time.perf_counter() - started)

    def _decode(self, spec: SourceSpec, inc: Incoming) -> Batch:
        if spec.changelog and any(v is None for v in inc.values):
            return self._decode_changelog(spec, inc)
        return self._decode_values(spec, inc)

    def _decode_changelog(self, spec: SourceSpec, inc: Incoming) -> Batch:
        """A table's records: values decode as usual, null values become tombstones (keyed by
        the Kafka key), in offset order."""
        live = [i for i, v in enumerate(inc.values) if v is not None]
        dead = [i for i, v in enumerate(inc.values) if v is None]
        sub = Incoming(
            inc.topic,
            [inc.values[i] for i in live],
            [inc.keys[i] for i in live],
            [inc.timestamps[i] for i in live],
            [inc.offsets[i] for i in live],
            inc.partition,
        )
        self._current = sub  # dead letters of the live part index into ``sub``
        try:
            upserts = self._decode_values(spec, sub)
        finally:
            self._current = inc
        schema = upserts.data.schema
        declared = getattr(spec.serde, "schema", None)
        key_type = upserts.keys.type
        if isinstance(declared, pa.Schema) and spec.key_field in declared.names:
            key_type = declared.field(spec.key_field).type
        tomb_keys = _tombstone_keys([inc.keys[i] for i in dead], spec.key_field, key_type)
        n_live, n_dead = upserts.num_rows, len(dead)
        data = record_batch(
            [
                pa.concat_arrays([upserts.data.column(j), pa.nulls(n_dead, f.type)])
                for j, f in enumerate(schema)
            ]
            + [pa.array([False] * n_live + [True] * n_dead, pa.bool_())],
            [*schema.names, TOMBSTONE],
            n_live + n_dead,
        )
        live_keys = upserts.keys
        if live_keys.type != tomb_keys.type:
            live_keys = _cast_keys(live_keys, tomb_keys.type)
        dead_ts = pa.array([inc.timestamps[i] for i in dead], pa.int64())
        dead_offsets = pa.array([inc.offsets[i] for i in dead], pa.int64())
        batch = Batch(
            data,
            pa.concat_arrays([live_keys, tomb_keys]),
            pa.concat_arrays([upserts.timestamps, dead_ts]),
            pa.concat_arrays([upserts.offsets, dead_offsets]),
        )
        return batch.take(pc.sort_indices(batch.offsets))

    def _decode_values(self, spec: SourceSpec, inc: Incoming) -> Batch:
        decoded = spec.serde.decode(inc.values)
        for i, err in decoded.bad:
            self._dead_letter(inc.topic, i, "decode", err)
        good = decoded.good
        data = decoded.data
        every = len(good) == len(inc.offsets)  # good: distinct indices, ascending
        offsets = pa.array(inc.offsets if every else [inc.offsets[i] for i in good], pa.int64())
        if spec.key_field is not None:
            if spec.key_field not in data.schema.names:
                keys = pa.nulls(len(good))
            else:
                keys = data.column(spec.key_field)
        else:
            keys = pa.array([inc.keys[i] for i in good], pa.binary())
        if spec.time_field is None:
            ts = pa.array([inc.timestamps[i] for i in good], pa.int64())
            return Batch(data, keys, ts, offsets)
        ts_col = data.column(spec.time_field) if spec.time_field in data.schema.names else None
        ts = _event_time(ts_col, len(good))
        if ts.null_count:
            valid = pc.is_valid(ts)
            for j in pc.indices_nonzero(pc.invert(valid)).to_pylist():
                self._dead_letter(
                    inc.topic,
                    good[j],
                    "decode",
                    SerdeError(
                        f"event-time field {spec.time_field!r} is missing or not a time "
                        "(ms since epoch or a timestamp)"
                    ),
                )
            return Batch(data, keys, ts, offsets).filter(valid)
        return Batch(data, keys, ts, offsets)

    # -- operators ---------------------------------------------------------------------------
    def _emit(self, node: int, outputs: Sequence[Batch | None]) -> None:
        for port, child, side in self.children[node]:
            if port >= len(outputs):
                continue
            batch = outputs[port]
            if batch is None or batch.num_rows == 0:
                continue
            self._run(child, batch, side)

    def _run(self, node: int, batch: Batch, side: int = 0) -> None:
        name = self.names[node]
        c = self.counters
        c.by_operator_in[name] = c.by_operator_in.get(name, 0) + batch.num_rows
        sink = self.sinks.get(node)
        if sink is not None:
            self._write(sink, batch, node)
            return
        op = self.operators[node]
        if isinstance(op, BinaryOperator):
            outputs = op.process_right(batch) if side else op.process_left(batch)
        else:
            outputs = op.process(batch)
        c.by_operator_out[name] = c.by_operator_out.get(name, 0) + sum(
            b.num_rows for b in outputs if b is not None
        )
        self._emit(node, outputs)

    def finish(self) -> None:
        """End of input (bounded runs): close every window, emit what remains."""
        if not self.finished:
            self.finished = True
            self.advance_watermark(END_OF_INPUT)

    def check_idle(self, idle_timeout_ms: int) -> None:
        """After ``idle_timeout_ms`` without input, let event time follow processing time from
        the last event time seen, so that windows of an idle partition still close."""
        if self.max_event_time is None:
            return
        idle = self._clock_ms() - self.last_input_ms
        if idle >= idle_timeout_ms:
            self.advance_watermark(self.max_event_time + idle)

    def advance_watermark(self, watermark: int) -> None:
        """Tell every operator the task's watermark moved; push what that emits."""
        for node in self.order:
            op = self.operators.get(node)
            if op is not None:
                self._emit(node, op.on_watermark(watermark))

    def tick(self) -> None:
        """Tell every operator the processing time (processing-time timers fire); push what that
        emits. Call it on every poll loop, between batches."""
        now = self._clock_ms()
        for node in self.order:
            op = self.operators.get(node)
            if op is not None:
                self._emit(node, op.on_processing_time(now))

    # -- output ------------------------------------------------------------------------------
    def _write(self, sink: SinkSpec, batch: Batch, node_id: int) -> None:
        data = batch.data
        values: list[bytes | None]
        if TOMBSTONE in data.schema.names:  # a table's changelog: deletions are null values
            dead = tombstone_mask(data, sink.topic)
            encoded = sink.serde.encode(value_columns(data))
            values = [None if d else v for v, d in zip(encoded, dead.tolist(), strict=True)]
        else:
            values = list(sink.serde.encode(data))
        keys = encode_keys(batch.keys)
        stamps = batch.timestamps.to_pylist()
        headers = self.provenance()
        if sink.late:
            late_op = self.late_parent.get(node_id, "?")
            headers = [
                *headers,
                (hdr.LATE_REASON, b"window closed: watermark passed window end + grace"),
                (hdr.DLQ_OPERATOR, late_op.encode()),
            ]
            self.counters.late_by[late_op] = self.counters.late_by.get(late_op, 0) + len(values)
        topic = sink.topic
        send_batch = getattr(self.out, "send_batch", None)
        if send_batch is not None:  # one call for the batch (OutputSink)
            too_large: list[tuple[int, RecordTooLargeError]] = send_batch(
                topic, values, keys, stamps, headers
            )
            for i, exc in too_large:
                self._too_large(batch, i, self.names[node_id], exc)
            self.counters.records_out += len(values) - len(too_large)
            return
        send = self.out.send
        refused = 0
        for i, (v, k, ts) in enumerate(zip(values, keys, stamps, strict=True)):
            try:
                send(topic, v, k, ts, headers)
            except RecordTooLargeError as exc:
                refused += 1
                self._too_large(batch, i, self.names[node_id], exc)
        self.counters.records_out += len(values) - refused

    def _too_large(self, batch: Batch, i: int, sink: str, exc: RecordTooLargeError) -> None:
        """An output record the producer refused as too large: dead-letter the input record it
        came from (its original bytes), or, for a derived record (a window result), a record
        without value whose headers say what happened."""
        offset = batch.offsets[i].as_py()
        failure = RecordFailure.from_exception(sink, exc, offset)
        inc = self._current
        index = self._index_of(offset)
        if inc is not None and index is not None:
            self._write_dead_letter(inc, index, failure)
            return
        topic = next(iter(self.sources), "?")
        derived = Incoming(
            topic,
            [None],
            encode_keys(batch.keys.slice(i, 1)),
            [batch.timestamps[i].as_py() or 0],
            [-1],
            self.task.partition,
        )
        self._write_dead_letter(derived, 0, failure)

    def _on_failure(self, failure: RecordFailure) -> None:
        inc = self._current
        index = self._index_of(failure.offset)
        if inc is None or index is None:
            log.error(
                "task %s: %s failed outside a fetched record: %s",
                self.task,
                failure.operator,
                failure.message,
            )
            return
        self._write_dead_letter(inc, index, failure)

    def _index_of(self, offset: int | None) -> int | None:
        """Where the record at ``offset`` is in the batch being processed (None: not in it)."""
        if offset is None or self._raw is None:
            return None
        if self._raw_index is None:
            self._raw_index = {off: i for i, off in enumerate(self._raw.offsets)}
        return self._raw_index.get(offset)

    def _dead_letter(self, topic: str, index: int, operator: str, err: Exception) -> None:
        assert self._current is not None
        failure = RecordFailure.from_exception(operator, err, self._current.offsets[index])
        self._write_dead_letter(self._current, index, failure)

    def _write_dead_letter(self, inc: Incoming, index: int, f: RecordFailure) -> None:
        if inc.offsets[index] < self.replayed_below.get((inc.topic, inc.partition), -1):
            return  # reported before the restart that made us read it again
        if inc.topic in self.global_topics and self.task.partition != 0:
            return  # every task reads a global table: the task of partition 0 reports for all
        headers: hdr.Headers = [
            (hdr.DLQ_ERROR_CLASS, f.error_class.encode()),
            (hdr.DLQ_ERROR_MESSAGE, f.message.encode("utf-8", "replace")),
            (hdr.DLQ_TRACEBACK, f.traceback_digest.encode()),
            (hdr.DLQ_TOPIC, inc.topic.encode()),
            (hdr.DLQ_PARTITION, str(inc.partition).encode()),
            (hdr.DLQ_OFFSET, str(inc.offsets[index]).encode()),
            (hdr.DLQ_TIMESTAMP, str(inc.timestamps[index]).encode()),
            (hdr.DLQ_APP, self.app.encode()),
            (hdr.DLQ_OPERATOR, f.operator.encode()),
            *self.provenance(),
        ]
        dlq = self.dlq_topic(inc.topic)
        try:
            self.out.send(dlq, inc.values[index], inc.keys[index], inc.timestamps[index], headers)
        except RecordTooLargeError as exc:  # the original bytes cannot go: keep the headers
            headers.append((hdr.DLQ_VALUE_OMITTED, str(exc).encode()))
            self.out.send(dlq, None, inc.keys[index], inc.timestamps[index], headers)
        self.counters.dead_letters += 1
        by = (f.operator, f.error_class)
        self.counters.dead_by[by] = self.counters.dead_by.get(by, 0) + 1
        log.warning(
            "task %s: record %s[%d]@%d dead-lettered by %s: %s",
            self.task,
            inc.topic,
            inc.partition,
            inc.offsets[index],
            f.operator,
            f.message,
        )


def _tombstone_keys(
    raw: list[bytes | None], key_field: str | None, key_type: pa.DataType
) -> pa.Array:
    """The keys of tombstones, from their Kafka keys: bytes, or (keyed by a value field) the
    UTF-8 text read as that field's type."""
    if key_field is None:
        return pa.array(raw, pa.binary())
    text = pa.array([None if k is None else k.decode("utf-8", "replace") for k in raw])
    return _cast_keys(text, key_type)


def _cast_keys(keys: pa.Array, key_type: pa.DataType) -> pa.Array:
    if pa.types.is_null(key_type) or keys.type == key_type:
        return keys if not pa.types.is_null(key_type) else pc.cast(keys, pa.string())
    try:
        return pc.cast(keys, key_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pc.cast(keys, pa.string())


def _event_time(col: pa.Array | None, n: int) -> pa.Array:
    """Event time in ms as int64 (nulls where missing or unusable)."""
    if col is None:
        return pa.nulls(n, pa.int64())
    t = col.type
    if pa.types.is_integer(t):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(t):
        return pc.cast(pc.floor(col), pa.int64(), safe=False)
    if pa.types.is_timestamp(t):
        return pc.cast(pc.cast(col, pa.timestamp("ms", tz=t.tz), safe=False), pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # ISO 8601: naive times are UTC; times with a zone ("Z", "+02:00") are converted.
        for typ in (pa.timestamp("ms"), pa.timestamp("ms", tz="UTC")):
            try:
                return pc.cast(pc.cast(col, typ), pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        return pa.array([_parse_time(v) for v in col.to_pylist()], pa.int64())
    return pa.nulls(n, pa.int64())


def _parse_time(value: str | None) -> int | None:
    """One ISO 8601 time in ms (None when it is not one): the batch mixed zoned and naive."""
    if value is None:
        return None
    for typ in (pa.timestamp("ms"), pa.timestamp("ms", tz="UTC")):
        try:
            return int(pc.cast(pa.array([value]), typ).cast(pa.int64())[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None
