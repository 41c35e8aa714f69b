"""Stateless operators: map, map_batches, filter, flat_map, branch.

Row-wise functions (``map``, ``filter``, ``flat_map``, ``branch`` predicates) get each record's
value as a dict; a record whose function raises is handled by the operator's
:class:`~raystream.operators.base.ErrorPolicy` (``on_error=``): by default it is reported as a
:class:`RecordFailure` (it goes to the dead-letter topic) and the rest of the batch goes on; it may
be retried with backoff first, or stop the app. Batch functions (``map_batches``) get and return
Arrow data and are the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream.errors import OperatorContractError
from raystream.operators.base import (
    DEFAULT_POLICY,
    Batch,
    ErrorPolicy,
    Operator,
    OperatorSpec,
    RecordFailure,
    Row,
    TaskContext,
)


class _RowOperator(Operator):
    """Shared plumbing: the task context, the error policy and per-record failure reporting."""

    def __init__(self, name: str, policy: ErrorPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or ErrorPolicy()
        self.ctx = TaskContext(app="", task="", partition=-1)

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def _attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, retried with backoff as the policy says; the last error propagates."""
        return self.policy.call(fn, *args, sleep=self.ctx.sleep)

    def _fail(self, batch: Batch, i: int, row: Row, exc: BaseException) -> None:
        """A record failed for good: stop the app (policy ``fail``) or dead-letter it."""
        self.policy.failed(self.name, exc)
        self.ctx.report_failure(
            RecordFailure.from_exception(
                self.name, exc, batch.offsets[i].as_py(), batch.keys[i].as_py(), row
            )
        )


class MapOperator(_RowOperator):
    """Replace each value by ``fn(value)`` (a dict)."""

    def __init__(
        self, name: str, fn: Callable[[Row], Row], policy: ErrorPolicy | None = None
    ) -> None:
        super().__init__(name, policy)
        self.fn = fn

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        out: list[Row] = []
        keep: list[int] = []
        for i, row in enumerate(batch.rows()):
            try:
                new = self._attempt(self.fn, row)
                if not isinstance(new, dict):
                    raise OperatorContractError(
                        f"map function must return a dict, got {type(new).__name__}"
                    )
            except Exception as exc:
                self._fail(batch, i, row, exc)
                continue
            out.append(new)
            keep.append(i)
        kept = batch if len(keep) == batch.num_rows else batch.take(keep)
        return [kept.with_data(_rows_to_batch(out))]


class FilterOperator(_RowOperator):
    """Keep the records for which ``fn(value)`` is truthy."""

    def __init__(
        self, name: str, fn: Callable[[Row], Any], policy: ErrorPolicy | None = None
    ) -> None:
        super().__init__(name, policy)
        self.fn = fn

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        mask: list[bool] = []
        for i, row in enumerate(batch.rows()):
            try:
                mask.append(bool(self._attempt(self.fn, row)))
            except Exception as exc:
                self._fail(batch, i, row, exc)
                mask.append(False)
        return [batch.filter(mask)]


class FlatMapOperator(_RowOperator):
    """Replace each value by the zero or more dicts ``fn(value)`` yields (same key and time)."""

    def __init__(
        self, name: str, fn: Callable[[Row], Iterable[Row]], policy: ErrorPolicy | None = None
    ) -> None:
        super().__init__(name, policy)
        self.fn = fn

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        out: list[Row] = []
        idx: list[int] = []
        for i, row in enumerate(batch.rows()):
            try:
                produced = self._attempt(lambda r: list(self.fn(r)), row)
                for item in produced:
                    if not isinstance(item, dict):
                        raise OperatorContractError(
                            f"flat_map function must yield dicts, got {type(item).__name__}"
                        )
            except Exception as exc:
                self._fail(batch, i, row, exc)
                continue
            out.extend(produced)
            idx.extend([i] * len(produced))
        return [batch.take(idx).with_data(_rows_to_batch(out))]


class MapBatchesOperator(_RowOperator):
    """Replace the values by ``fn(record_batch)``: Arrow in, Arrow out, a row per input row.

    When the function raises, the batch is retried record by record (each record as the error
    policy says) so that only the records that fail are dead-lettered.
    """

    def __init__(
        self, name: str, fn: Callable[[pa.RecordBatch], Any], policy: ErrorPolicy | None = None
    ) -> None:
        super().__init__(name, policy)
        self.fn = fn

    def _call(self, data: pa.RecordBatch) -> pa.RecordBatch:
        result = self.fn(data)
        if isinstance(result, pa.Table):
            result = (
                result.combine_chunks().to_batches()[0]
                if result.num_rows
                else (pa.RecordBatch.from_pylist([], schema=result.schema))
            )
        elif isinstance(result, dict):
            result = pa.RecordBatch.from_pydict(result)
        if not isinstance(result, pa.RecordBatch):
            raise OperatorContractError(
                "map_batches function must return a pyarrow.RecordBatch, Table or dict of "
                f"columns, got {type(result).__name__}"
            )
        if result.num_rows != data.num_rows:
            raise OperatorContractError(
                f"map_batches function returned {result.num_rows} rows for {data.num_rows}; it "
                "must keep one row per input row (use filter or flat_map to change the count)"
            )
        return result

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        if batch.num_rows == 0:
            return [batch]
        try:
            return [batch.with_data(self._call(batch.data))]
        except OperatorContractError:
            raise
        except Exception:
            pass
        parts: list[pa.RecordBatch] = []
        keep: list[int] = []
        for i in range(batch.num_rows):
            one = batch.data.slice(i, 1)
            try:
                parts.append(self._attempt(self._call, one))
            except Exception as exc:
                self._fail(batch, i, one.to_pylist()[0], exc)
                continue
            keep.append(i)
        if not parts:
            return [batch.take([]).with_data(pa.RecordBatch.from_pydict({}))]
        table = pa.Table.from_batches(parts).combine_chunks()
        merged = table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pydict({})
        return [batch.take(keep).with_data(merged)]


class BranchOperator(_RowOperator):
    """Send each record to the first branch whose predicate holds (Kafka Streams' ``split``).

    With ``default`` the last port gets the records no predicate took; without it they are dropped
    on purpose (they match no branch), as in Kafka Streams.
    """

    def __init__(
        self,
        name: str,
        predicates: Sequence[Callable[[Row], Any]],
        default: bool,
        policy: ErrorPolicy | None = None,
    ) -> None:
        super().__init__(name, policy)
        self.predicates = list(predicates)
        self.default = default
        self.ports = len(self.predicates) + (1 if default else 0)

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        picks: list[list[int]] = [[] for _ in range(self.ports)]
        for i, row in enumerate(batch.rows()):
            try:
                port = self._attempt(self._pick, row)
            except Exception as exc:
                self._fail(batch, i, row, exc)
                continue
            if port is not None:
                picks[port].append(i)
        return [batch.take(p) if p else None for p in picks]

    def _pick(self, row: Row) -> int | None:
        """The port of the first predicate that holds (the default port, or None)."""
        for b, pred in enumerate(self.predicates):
            if pred(row):
                return b
        return self.ports - 1 if self.default else None


def _rows_to_batch(rows: list[Row]) -> pa.RecordBatch:
    if not rows:
        return pa.RecordBatch.from_pydict({})
    try:
        return pa.RecordBatch.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise OperatorContractError(
            f"function results cannot form one Arrow batch (mixed types in a field?): {exc}"
        ) from exc


@dataclass(frozen=True)
class MapSpec(OperatorSpec):
    """Spec of ``stream.map(fn)``."""

    fn: Callable[[Row], Row]
    #: What happens when ``fn`` raises on a record (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "map"

    def build(self, name: str) -> Operator:
        return MapOperator(name, self.fn, self.on_error)


@dataclass(frozen=True)
class FilterSpec(OperatorSpec):
    """Spec of ``stream.filter(fn)``."""

    fn: Callable[[Row], Any]
    #: What happens when ``fn`` raises on a record (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "filter"

    def build(self, name: str) -> Operator:
        return FilterOperator(name, self.fn, self.on_error)


@dataclass(frozen=True)
class FlatMapSpec(OperatorSpec):
    """Spec of ``stream.flat_map(fn)``."""

    fn: Callable[[Row], Iterable[Row]]
    #: What happens when ``fn`` raises on a record (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "flat_map"

    def build(self, name: str) -> Operator:
        return FlatMapOperator(name, self.fn, self.on_error)


@dataclass(frozen=True)
class MapBatchesSpec(OperatorSpec):
    """Spec of ``stream.map_batches(fn)``."""

    fn: Callable[[pa.RecordBatch], Any]
    #: What happens when ``fn`` raises on a record (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "map_batches"

    def build(self, name: str) -> Operator:
        return MapBatchesOperator(name, self.fn, self.on_error)


@dataclass(frozen=True)
class BranchSpec(OperatorSpec):
    """Spec of ``stream.branch(*predicates, default=...)``."""

    predicates: tuple[Callable[[Row], Any], ...]
    default: bool = True
    #: What happens when a predicate raises on a record (``on_error=``).
    on_error: ErrorPolicy = DEFAULT_POLICY
    kind = "branch"

    @property
    def ports(self) -> int:  # type: ignore[override]
        return len(self.predicates) + (1 if self.default else 0)

    def build(self, name: str) -> Operator:
        return BranchOperator(name, self.predicates, self.default, self.on_error)
