"""Keyed process functions with state and timers (``stream.process``), as Flink's
``KeyedProcessFunction`` or Kafka Streams' Processor API, for sagas, timeouts and event sourcing.

Semantics, for one task:

* Records are handled one by one in batch (offset) order, so in order per key: the slow, row-wise
  path. Records with a null key or null event time are skipped and counted
  (``dropped_null_keys``, ``dropped_null_timestamps``), as keyed aggregates do.
* Each call (a record, or a timer) works on a private copy of its key's state; its state changes,
  timer changes and emitted records take effect together when it returns. A call that raises
  changes nothing. It is handled by the operator's :class:`ErrorPolicy` (``on_error=``): called
  again with backoff (``"retry"``), then a record's failure is reported as a
  :class:`RecordFailure` (dead-lettered by the runtime) and a timer's failure is counted in
  ``failed_timers`` (the timer is spent); or the app stops (``"fail"``).
* Watermark: the largest event time seen minus ``out_of_orderness``, advanced record by record
  (and by the task's ``on_watermark``: idle partitions, end of input). Right after each record,
  every event-time timer at or before the watermark fires, in (time, registration) order; so
  results do not depend on where batch boundaries fall.
* Processing-time timers fire, in order, once the processing clock reaches them: checked after
  every micro-batch and on every :meth:`ProcessOperator.on_processing_time` (the task's ``tick``).
* A timer registered (by a timer callback) for a time already reached fires at the next check,
  not in the same round, so a callback re-registering a due timer cannot loop forever. At the end
  of a bounded input every pending event-time timer fires once; processing-time timers do not.
* Checkpoints: key state (``key -> dict``) and timers (``(domain, time, key) -> number``) are two
  :class:`KeyedStore` s, written incrementally; the watermark and counters are in the snapshot.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream.errors import OperatorContractError, TopologyError
from raystream.operators.base import (
    DEFAULT_POLICY,
    Batch,
    ErrorPolicy,
    Operator,
    OperatorSpec,
    RecordFailure,
    TaskContext,
)
from raystream.operators.keyed import check_scalar_keys
from raystream.operators.process_context import (
    FunctionProcess,
    ProcessContext,
    ProcessFunction,
    Row,
    state_changes,
)
from raystream.operators.timers import TimeDomain, TimerQueue
from raystream.operators.windows_common import MIN_TIME
from raystream.serde import encode_key
from raystream.state.base import KeyedStore
from raystream.state.memory import MemoryStore
from raystream.timeutil import Duration, parse_duration

#: A record waiting in an output port: ``(value, key, timestamp, source offset or None)``.
_Out = tuple[Row, Any, int, int | None]
#: What one call did: (state changed, new state, timer operations, emitted records).
_Call = tuple[
    bool, dict[str, Any] | None, list[tuple[bool, TimeDomain, int]], list[tuple[int, Row, Any, int]]
]


@dataclass(frozen=True)
class ProcessSpec(OperatorSpec):
    """Spec of ``stream.process(function, ...)``.

    ``function`` is a :class:`ProcessFunction` subclass (instantiated once per task), an instance
    (deep-copied once per task) or a plain function ``fn(ctx, key, value)`` (with ``on_timer``).
    """

    function: Any
    on_timer: Callable[..., Any] | None = None
    outputs: tuple[str, ...] = ()
    out_of_orderness_ms: int = 0
    #: What happens when the function raises (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "process"

    @property
    def ports(self) -> int:  # type: ignore[override]
        return max(len(self.outputs), 1)

    @staticmethod
    def of(
        function: Any,
        *,
        on_timer: Callable[..., Any] | None = None,
        outputs: Sequence[str] | None = None,
        out_of_orderness: Duration = 0,
        on_error: str | ErrorPolicy | None = None,
    ) -> ProcessSpec:
        """Check the arguments of ``stream.process`` and build the spec."""
        if isinstance(function, type):
            if not issubclass(function, ProcessFunction):
                raise TopologyError(
                    f"process({function.__name__}): a class must subclass "
                    "raystream.ProcessFunction (override process and on_timer)"
                )
        elif not isinstance(function, ProcessFunction) and not callable(function):
            raise TopologyError(
                "process() takes a ProcessFunction subclass, an instance of one, or a function "
                f"fn(ctx, key, value); got {type(function).__name__}"
            )
        plain = not isinstance(function, type | ProcessFunction)
        if on_timer is not None and not plain:
            raise TopologyError(
                "process(on_timer=...) is for plain functions; a ProcessFunction overrides "
                "on_timer(self, ctx, key, timestamp, domain) instead"
            )
        if on_timer is not None and not callable(on_timer):
            raise TopologyError(
                f"process(on_timer=) expects a function, got {type(on_timer).__name__}"
            )
        names = _output_names(outputs)
        ooo = parse_duration(out_of_orderness, "process(out_of_orderness)")
        return ProcessSpec(function, on_timer, names, ooo, ErrorPolicy.of(on_error))

    def make_function(self) -> ProcessFunction:
        """A fresh process function for one task."""
        f = self.function
        if isinstance(f, type):
            return f()
        if isinstance(f, ProcessFunction):
            return copy.deepcopy(f)
        return FunctionProcess(f, self.on_timer)

    def build(self, name: str) -> Operator:
        return ProcessOperator(name, self)


def _output_names(outputs: Sequence[str] | None) -> tuple[str, ...]:
    if outputs is None:
        return ()
    if isinstance(outputs, str):
        raise TopologyError(
            f"process(outputs={outputs!r}): give a tuple of output names, e.g. "
            f"outputs=({outputs!r},)"
        )
    names = tuple(outputs)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TopologyError(
            f"process(outputs=...) takes non-empty output names, got {list(names)!r}"
        )
    if len(set(names)) != len(names):
        raise TopologyError(f"process(outputs=...): names must be unique, got {list(names)!r}")
    return names


@dataclass(frozen=True)
class ProcessSnapshot:
    """Immutable, picklable state of a :class:`ProcessOperator`, stores aside."""

    watermark: int
    next_timer: int
    counters: tuple[int, int, int]  # dropped_null_keys, dropped_null_timestamps, failed_timers
    key_type: bytes | None  # serialized Arrow schema with one field, the key's type
    states: tuple[tuple[Any, Any], ...] = ()
    timers: tuple[tuple[Any, Any], ...] = ()


class ProcessOperator(Operator):
    """Runs a :class:`ProcessFunction` for one task: key state, timers, one or more outputs."""

    def __init__(self, name: str, spec: ProcessSpec) -> None:
        self.name = name
        self.spec = spec
        self.ports = spec.ports
        self.outputs = spec.outputs
        self.fn = spec.make_function()
        self._timers_allowed = self.fn.handles_timers
        self.states = MemoryStore()
        self.timers = TimerQueue()
        self.ctx = TaskContext(app="", task="", partition=-1)
        self.watermark = MIN_TIME
        self.dropped_null_keys = 0
        self.dropped_null_timestamps = 0
        self.failed_timers = 0
        self._key_type: pa.DataType | None = None
        self._out: list[list[_Out]] = [[] for _ in range(self.ports)]

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    # -- input -------------------------------------------------------------------------------

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        if batch.num_rows == 0:
            return self._flush()
        check_scalar_keys(
            batch.keys,
            f"{self.name}: cannot key state by a {{type}} key; re-key the stream by a scalar "
            "(string, int, binary) with group_by(...) or repartition(by=...) first",
        )
        if batch.keys.type != pa.null():
            self._key_type = batch.keys.type
        keys = batch.keys.to_pylist()
        stamps = batch.timestamps.to_pylist()
        offsets = batch.offsets.to_pylist()
        now = self.ctx.clock_ms()
        ooo = self.spec.out_of_orderness_ms
        for i, row in enumerate(batch.rows()):
            key, ts = keys[i], stamps[i]
            if key is None:
                self.dropped_null_keys += 1
                continue
            if ts is None:
                self.dropped_null_timestamps += 1
                continue
            self._record(key, row, ts, offsets[i], now)
            self.watermark = max(self.watermark, ts - ooo)
            self._fire(TimeDomain.EVENT_TIME, self.watermark, now)
        self._fire(TimeDomain.PROCESSING_TIME, now, now)
        return self._flush()

    def on_watermark(self, watermark: int) -> Sequence[Batch | None]:
        self.watermark = max(self.watermark, int(watermark))
        self._fire(TimeDomain.EVENT_TIME, self.watermark, self.ctx.clock_ms())
        return self._flush()

    def on_processing_time(self, now_ms: int) -> Sequence[Batch | None]:
        self._fire(TimeDomain.PROCESSING_TIME, now_ms, now_ms)
        return self._flush()

    # -- calls -------------------------------------------------------------------------------

    def _context(
        self, key: Any, ts: int, now: int, emits: list[Any], ops: list[Any]
    ) -> ProcessContext:
        return ProcessContext(
            key=key,
            timestamp=ts,
            watermark=self.watermark,
            processing_time=now,
            outputs=self.outputs,
            stored=self.states.get(key),
            emits=emits,
            timer_ops=ops,
            timers_allowed=self._timers_allowed,
        )

    def _call(self, key: Any, ts: int, now: int, run: Callable[[ProcessContext], None]) -> _Call:
        """One call on a fresh context (so a retry starts from the key's state as it was),
        retried with backoff as the error policy says; the last error propagates."""

        def attempt() -> _Call:
            emits: list[tuple[int, Row, Any, int]] = []
            ops: list[tuple[bool, TimeDomain, int]] = []
            ctx = self._context(key, ts, now, emits, ops)
            run(ctx)
            changed, new = state_changes(ctx)
            return changed, new, ops, emits

        result: _Call = self.spec.on_error.call(attempt, sleep=self.ctx.sleep)
        return result

    def _record(self, key: Any, row: Row, ts: int, offset: int | None, now: int) -> None:
        try:
            changed, new, ops, emits = self._call(
                key, ts, now, lambda ctx: self.fn.process(ctx, key, row)
            )
        except Exception as exc:
            self.spec.on_error.failed(self.name, exc)
            self.ctx.report_failure(RecordFailure.from_exception(self.name, exc, offset, key, row))
            return
        self._apply(key, changed, new, ops, emits, offset)

    def _on_timer(self, key: Any, ts: int, domain: TimeDomain, ctx: ProcessContext) -> None:
        self.fn.on_timer(ctx, key, ts, domain)

    def _fire(self, domain: TimeDomain, limit: int, now: int) -> None:
        for ts, key in self.timers.due(domain, limit):
            try:
                changed, new, ops, emits = self._call(
                    key, ts, now, functools.partial(self._on_timer, key, ts, domain)
                )
            except Exception as exc:
                self.failed_timers += 1
                self.spec.on_error.failed(self.name, exc)
                self.ctx.report_failure(
                    RecordFailure.from_exception(
                        self.name, exc, None, key, {"timer": ts, "domain": domain.value}
                    )
                )
                continue
            self._apply(key, changed, new, ops, emits, None)

    def _apply(
        self,
        key: Any,
        changed: bool,
        new: dict[str, Any] | None,
        ops: list[tuple[bool, TimeDomain, int]],
        emits: list[tuple[int, Row, Any, int]],
        offset: int | None,
    ) -> None:
        if changed:
            if new is None:
                self.states.delete(key)
            else:
                self.states.put(key, new)
        for register, domain, ts in ops:
            if register:
                self.timers.register(key, ts, domain)
            else:
                self.timers.delete(key, ts, domain)
        for port, value, out_key, ts in emits:
            self._out[port].append((value, out_key, ts, offset))

    # -- output ------------------------------------------------------------------------------

    def _flush(self) -> list[Batch | None]:
        out = [self._batch(recs) for recs in self._out]
        self._out = [[] for _ in range(self.ports)]
        return out

    def _batch(self, recs: list[_Out]) -> Batch | None:
        if not recs:
            return None
        try:
            data = pa.RecordBatch.from_struct_array(pa.array([r[0] for r in recs]))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise OperatorContractError(
                f"{self.name}: values emitted to one output cannot form one Arrow batch (a field "
                f"with values of different types?): {exc}. Keep each field's type stable, or "
                "emit different kinds of records to different outputs"
            ) from exc
        return Batch(
            data,
            _keys(recs, self._key_type),
            pa.array([r[2] for r in recs], pa.int64()),
            pa.array([r[3] for r in recs], pa.int64()),
        )

    # -- state -------------------------------------------------------------------------------

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.states, self.timers.store)

    def snapshot(self, with_stores: bool = True) -> ProcessSnapshot:
        key_type = None
        if self._key_type is not None:
            key_type = pa.schema([pa.field("key", self._key_type)]).serialize().to_pybytes()
        return ProcessSnapshot(
            self.watermark,
            self.timers.next_number,
            (self.dropped_null_keys, self.dropped_null_timestamps, self.failed_timers),
            key_type,
            tuple(self.states.items()) if with_stores else (),
            tuple(self.timers.store.items()) if with_stores else (),
        )

    def restore(
        self, state: Any, stores: Sequence[Iterable[tuple[Hashable, Any]]] | None = None
    ) -> None:
        if not isinstance(state, ProcessSnapshot):
            raise TopologyError(
                f"{self.name}: cannot restore from a {type(state).__name__}; the checkpoint was "
                "not written by a process operator (was the topology changed? keep names stable)"
            )
        self.watermark = state.watermark
        self.dropped_null_keys, self.dropped_null_timestamps, self.failed_timers = state.counters
        self._key_type = None
        if state.key_type is not None:
            self._key_type = pa.ipc.read_schema(pa.py_buffer(state.key_type)).field(0).type
        if stores is None:
            states, timers = state.states, state.timers
        else:
            states, timers = tuple(stores[0]), tuple(stores[1])
        self.states.load(states)
        self.timers.load(timers, state.next_timer)
        self._out = [[] for _ in range(self.ports)]

    # -- introspection (tests, metrics) --------------------------------------------------------

    def key_state(self, key: Any) -> dict[str, Any]:
        """A copy of ``key``'s state (empty when it has none)."""
        return copy.deepcopy(dict(self.states.get(key) or {}))

    def pending_timers(self, domain: TimeDomain) -> list[tuple[int, Any]]:
        """Every pending timer of ``domain`` as ``(timestamp, key)``, in firing order."""
        return self.timers.pending(domain)


def _keys(recs: list[_Out], key_type: pa.DataType | None) -> pa.Array:
    """The emitted keys as one array: the input key type when they fit, else inferred, else
    (keys of mixed types) their Kafka key bytes."""
    keys = [r[1] for r in recs]
    if key_type is not None:
        try:
            return pa.array(keys, key_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    try:
        return pa.array(keys)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([encode_key(k) for k in keys], pa.binary())
