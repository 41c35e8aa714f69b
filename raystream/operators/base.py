"""The contract between the runtime and every operator.

A micro-batch is a :class:`Batch`: the records' values as a ``pyarrow.RecordBatch`` plus three
aligned arrays the runtime needs (key, event timestamp in ms, source offset). An operator *spec* is
a frozen dataclass built by the topology API; its ``build()`` returns the runtime :class:`Operator`
for one task. Operators are fed batches in offset order per task and return one output batch per
output port (most have one; ``branch`` has one per branch; windows add a late-data port).
"""

from __future__ import annotations

import hashlib
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import TopologyError, UserFunctionError
from raystream.state.base import KeyedStore

Row = dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """A micro-batch of records flowing between operators.

    ``data`` holds the value columns. ``keys`` (any Arrow type; binary for raw Kafka keys),
    ``timestamps`` (int64 event time, ms) and ``offsets`` (int64 source offset, null for derived
    records such as window results) are aligned with ``data``'s rows.
    """

    data: pa.RecordBatch
    keys: pa.Array
    timestamps: pa.Array
    offsets: pa.Array

    def __post_init__(self) -> None:
        n = self.data.num_rows
        if not (len(self.keys) == len(self.timestamps) == len(self.offsets) == n):
            raise ValueError(
                f"batch arrays are misaligned: data={n} keys={len(self.keys)} "
                f"timestamps={len(self.timestamps)} offsets={len(self.offsets)}"
            )

    @staticmethod
    def from_rows(
        rows: Sequence[Row],
        keys: Sequence[Any] | pa.Array | None = None,
        timestamps: Sequence[int] | pa.Array | None = None,
        offsets: Sequence[int | None] | pa.Array | None = None,
        schema: pa.Schema | None = None,
    ) -> Batch:
        """Build a batch from Python dicts (keys/timestamps/offsets default to nulls/zeros)."""
        data = (
            pa.RecordBatch.from_pylist(list(rows), schema=schema)
            if rows or schema is not None
            else pa.RecordBatch.from_pydict({})
        )
        n = len(rows)
        return Batch(
            data,
            _as_array(keys, n, pa.null()),
            _as_array(timestamps, n, pa.int64(), fill=0),
            _as_array(offsets, n, pa.int64()),
        )

    @staticmethod
    def empty() -> Batch:
        """A batch with no rows and no columns."""
        return Batch.from_rows([])

    @property
    def num_rows(self) -> int:
        """Number of records in the batch."""
        return int(self.data.num_rows)

    def rows(self) -> list[Row]:
        """The values as Python dicts (the slow path, for row-wise user functions)."""
        rows: list[Row] = self.data.to_pylist()
        if self.data.num_columns == 0:
            return [{} for _ in range(self.num_rows)]
        return rows

    def filter(self, mask: pa.Array | Sequence[bool]) -> Batch:
        """Keep the rows where ``mask`` is true."""
        m = mask if isinstance(mask, pa.Array) else pa.array(mask, pa.bool_())
        return Batch(
            self.data.filter(m),
            pc.filter(self.keys, m),
            pc.filter(self.timestamps, m),
            pc.filter(self.offsets, m),
        )

    def take(self, indices: pa.Array | Sequence[int]) -> Batch:
        """Rows at ``indices`` (repeats allowed), in that order."""
        idx = indices if isinstance(indices, pa.Array) else pa.array(indices, pa.int64())
        return Batch(
            self.data.take(idx),
            self.keys.take(idx),
            self.timestamps.take(idx),
            self.offsets.take(idx),
        )

    def with_data(self, data: pa.RecordBatch) -> Batch:
        """Same records (keys, times, offsets) with new values; the row count must match."""
        return Batch(data, self.keys, self.timestamps, self.offsets)

    def with_keys(self, keys: pa.Array) -> Batch:
        """Same records with new keys."""
        return Batch(self.data, keys, self.timestamps, self.offsets)


def _as_array(
    values: Sequence[Any] | pa.Array | None, n: int, typ: pa.DataType, fill: Any = None
) -> pa.Array:
    if values is None:
        return pa.array([fill] * n, typ) if fill is not None else pa.nulls(n, typ)
    if isinstance(values, pa.Array):
        return values
    return pa.array(list(values), None if typ == pa.null() else typ)


@dataclass(frozen=True)
class RecordFailure:
    """A record an operator could not process; the runtime sends it to the dead-letter topic."""

    operator: str
    error_class: str
    message: str
    traceback_digest: str
    offset: int | None
    key: Any = None
    value: Any = None

    @staticmethod
    def from_exception(
        operator: str, exc: BaseException, offset: int | None, key: Any = None, value: Any = None
    ) -> RecordFailure:
        """Describe ``exc`` raised while processing one record."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        digest = hashlib.sha1(tb.encode(), usedforsecurity=False).hexdigest()[:12]
        return RecordFailure(
            operator=operator,
            error_class=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc)[:1000],
            traceback_digest=digest,
            offset=offset,
            key=key,
            value=value,
        )


ON_ERROR_ACTIONS = ("dead_letter", "retry", "fail")


@dataclass(frozen=True)
class ErrorPolicy:
    """What an operator does when its user function raises on a record (``on_error=``).

    - ``"dead_letter"`` (default): the record goes to the dead-letter topic, the rest go on;
    - ``"retry"`` (or ``"retry:N"``): call the function again up to ``retries`` times, waiting
      ``backoff_ms`` (doubled each time, at most ``max_backoff_ms``), then dead-letter it;
    - ``"fail"``: stop the app (a :class:`~raystream.errors.UserFunctionError` naming the
      operator); nothing of the failed epoch is committed.
    """

    action: str = "dead_letter"
    retries: int = 3
    backoff_ms: int = 100
    max_backoff_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.action not in ON_ERROR_ACTIONS:
            raise TopologyError(
                f"on_error: {self.action!r} is not one of {list(ON_ERROR_ACTIONS)} "
                "(or 'retry:N', or an ErrorPolicy)"
            )
        if self.retries < 0 or self.backoff_ms < 0 or self.max_backoff_ms < self.backoff_ms:
            raise TopologyError(
                "on_error: retries and backoff_ms must be >= 0 and max_backoff_ms >= backoff_ms"
            )

    @staticmethod
    def of(value: str | ErrorPolicy | None) -> ErrorPolicy:
        """A policy from ``on_error=``: a policy, an action name, or ``"retry:N"``."""
        if value is None:
            return ErrorPolicy()
        if isinstance(value, ErrorPolicy):
            return value
        if isinstance(value, str) and value.startswith("retry:"):
            count = value.partition(":")[2]
            if not count.isdigit():
                raise TopologyError(f"on_error: {value!r}: write 'retry:N' with N a number")
            return ErrorPolicy("retry", retries=int(count))
        if not isinstance(value, str):
            raise TopologyError(f"on_error: expected a string or an ErrorPolicy, got {value!r}")
        return ErrorPolicy(value)

    def call(
        self, fn: Callable[..., Any], *args: Any, sleep: Callable[[float], None] = time.sleep
    ) -> Any:
        """``fn(*args)``, called again after a backoff while it raises and retries remain; the
        last exception propagates."""
        attempts = 1 + (self.retries if self.action == "retry" else 0)
        delay = self.backoff_ms
        for attempt in range(attempts):
            try:
                return fn(*args)
            except Exception:
                if attempt + 1 >= attempts:
                    raise
                sleep(delay / 1000.0)
                delay = min(delay * 2, self.max_backoff_ms)
        raise AssertionError("unreachable")  # pragma: no cover

    def failed(self, operator: str, exc: BaseException) -> None:
        """Called once a record has failed for good: raises when the policy is ``"fail"``."""
        if self.action == "fail":
            raise UserFunctionError(
                f"operator {operator!r} failed on a record and its on_error policy is 'fail', so "
                f"the app stops: {type(exc).__name__}: {exc}. Fix the function (or use "
                "on_error='dead_letter'), then run the app again: it resumes from its last commit"
            ) from exc


#: The policy of an operator given no ``on_error=``: dead-letter the failing record.
DEFAULT_POLICY = ErrorPolicy()


@dataclass
class TaskContext:
    """What an operator may see of its task: identity, a failure sink and an injectable clock."""

    app: str
    task: str
    partition: int
    report_failure: Callable[[RecordFailure], None] = field(default=lambda f: None)
    clock_ms: Callable[[], int] = field(default=lambda: 0)
    #: How an operator waits between retries of a user function (``on_error="retry"``).
    sleep: Callable[[float], None] = field(default=time.sleep)


class Operator(ABC):
    """The runtime logic of one topology node for one task."""

    #: Number of output ports; ``process`` returns a sequence of this length.
    ports: int = 1

    def open(self, ctx: TaskContext) -> None:  # noqa: B027 - optional hook
        """Called once before the first batch, with the task's context."""

    @abstractmethod
    def process(self, batch: Batch) -> Sequence[Batch | None]:
        """Process one micro-batch; return one batch (or None for nothing) per output port."""

    def on_watermark(self, watermark: int) -> Sequence[Batch | None]:
        """The task's watermark advanced to ``watermark`` (ms); emit what it closes."""
        return ()

    def on_processing_time(self, now_ms: int) -> Sequence[Batch | None]:
        """The processing clock reads ``now_ms`` (called often, between batches); emit what
        became due, e.g. processing-time timers."""
        return ()

    def state_stores(self) -> Sequence[KeyedStore]:
        """The keyed stores that hold this operator's state (checkpointed incrementally: only
        their dirty keys are written each epoch), in a fixed order; empty when stateless."""
        return ()

    def snapshot(self, with_stores: bool = True) -> Any:
        """The operator's state, immutable and serialisable; None when stateless.

        ``with_stores=False`` leaves out the contents of :meth:`state_stores` (a checkpoint
        writes those apart, incrementally); everything else is in the snapshot.
        """
        return None

    def restore(  # noqa: B027 - optional hook
        self, state: Any, stores: Sequence[Iterable[tuple[Hashable, Any]]] | None = None
    ) -> None:
        """Load state produced by :meth:`snapshot`. When the snapshot was taken without its
        stores, ``stores`` gives their items, in :meth:`state_stores` order."""


class OperatorSpec(ABC):
    """A frozen description of an operator, built by the topology API."""

    #: A short kind name used in operator names and metrics (``map``, ``filter``...).
    kind: str = "operator"
    ports: int = 1

    @abstractmethod
    def build(self, name: str) -> Operator:
        """The runtime operator, named ``name`` (unique in the topology)."""
