"""Aggregations: what a window or a table computes per key.

An :class:`Aggregation` is a frozen description with an *accumulator* life cycle (``initial``,
``merge``, ``result``) and a vectorised path: :func:`batch_partials` aggregates a whole micro-batch
per group with one ``pyarrow`` ``group_by`` (plus NumPy sorts for the order-sensitive ones) into
one *partial* accumulator per group, which the operator then merges into its state. Only
:func:`custom` reducers run Python per record.

Rules shared by every field aggregation: null values are ignored (``count()`` counts records,
``count(field)`` counts non-null values); an aggregation over no non-null value gives null (0 for
the counts). Accumulators of the built-in aggregations are immutable values (ints, tuples,
frozensets), so the state can be snapshotted without copying.

Ordering: ``first``/``last`` pick the value with the smallest/largest event time; ties are broken
by arrival order (``first`` takes the earliest arrival, ``last`` the latest). ``collect`` keeps the
first ``limit`` non-null values in arrival order.
"""

from __future__ import annotations

import builtins
import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import ConfigError, UserFunctionError
from raystream.operators.aggregations_batch import (
    ArrowSpec,
    GroupedBatch,
    group_starts,
)
from raystream.operators.base import Row


class Aggregation(ABC):
    """An aggregation's spec and accumulator life cycle."""

    kind: ClassVar[str] = "aggregation"
    #: False for Python-per-record reducers (``custom``), which ``batch_partials`` skips.
    vectorised: ClassVar[bool] = True
    #: Whether two accumulators can be merged (needed by session windows).
    mergeable: ClassVar[bool] = True

    def fields(self) -> tuple[str, ...]:
        """The value columns the aggregation reads."""
        field = getattr(self, "field", None)
        return (field,) if field else ()

    @abstractmethod
    def initial(self) -> Any:
        """The accumulator of an empty group."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """The accumulator of the union of two groups."""

    def result(self, acc: Any) -> Any:
        """The value emitted for an accumulator."""
        return acc

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType | None:
        """The Arrow type of the result column (None: infer from the values)."""
        return field_type

    def arrow_specs(self) -> list[ArrowSpec]:
        """The Arrow hash aggregates :meth:`partials` reads from :class:`GroupedBatch`."""
        return []

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        """One partial accumulator per group of ``grouped`` (vectorised aggregations only)."""
        raise NotImplementedError(f"{self.kind} has no vectorised path")

    def add(self, acc: Any, row: Row) -> Any:
        """Fold one record's value into ``acc`` (the Python path of ``custom`` reducers)."""
        raise NotImplementedError(f"{self.kind} is vectorised; use partials()")


@dataclass(frozen=True)
class Count(Aggregation):
    """Number of records, or of non-null ``field`` values when ``field`` is given."""

    field: str | None = None
    kind = "count"

    def initial(self) -> int:
        return 0

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType:
        return pa.int64()

    def arrow_specs(self) -> list[ArrowSpec]:
        if self.field is None:
            return [(None, "count_all", None)]
        return [(self.field, "count", pc.CountOptions(mode="only_valid"))]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        if self.field is None:
            return grouped.column(None, "count_all")
        return grouped.column(self.field, "count")


def _add_opt(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True)
class Sum(Aggregation):
    """Sum of the non-null values of ``field`` (null when there is none)."""

    field: str
    kind = "sum"

    def initial(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        return _add_opt(a, b)

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType | None:
        return _sum_type(field_type)

    def arrow_specs(self) -> list[ArrowSpec]:
        return [(self.field, "sum", None)]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return grouped.column(self.field, "sum")


def _sum_type(t: pa.DataType | None) -> pa.DataType | None:
    if t is None:
        return None
    if pa.types.is_signed_integer(t):
        return pa.int64()
    if pa.types.is_unsigned_integer(t):
        return pa.uint64()
    if pa.types.is_floating(t):
        return pa.float64()
    return None


@dataclass(frozen=True)
class Min(Aggregation):
    """Smallest non-null value of ``field`` (numbers, strings, binary, temporal types)."""

    field: str
    kind = "min"

    def initial(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else builtins.min(a, b)

    def arrow_specs(self) -> list[ArrowSpec]:
        return [(self.field, "min", None)]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return grouped.column(self.field, "min")


@dataclass(frozen=True)
class Max(Aggregation):
    """Largest non-null value of ``field``."""

    field: str
    kind = "max"

    def initial(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else builtins.max(a, b)

    def arrow_specs(self) -> list[ArrowSpec]:
        return [(self.field, "max", None)]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return grouped.column(self.field, "max")


@dataclass(frozen=True)
class Mean(Aggregation):
    """Arithmetic mean of the non-null values of ``field`` (float; null when there is none)."""

    field: str
    kind = "mean"

    def initial(self) -> tuple[Any, int]:
        return (None, 0)

    def merge(self, a: tuple[Any, int], b: tuple[Any, int]) -> tuple[Any, int]:
        return (_add_opt(a[0], b[0]), a[1] + b[1])

    def result(self, acc: tuple[Any, int]) -> float | None:
        return None if acc[1] == 0 else float(acc[0]) / acc[1]

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType:
        return pa.float64()

    def arrow_specs(self) -> list[ArrowSpec]:
        return [
            (self.field, "sum", None),
            (self.field, "count", pc.CountOptions(mode="only_valid")),
        ]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        sums = grouped.column(self.field, "sum")
        counts = grouped.column(self.field, "count")
        return list(zip(sums, counts, strict=True))


@dataclass(frozen=True)
class CountDistinct(Aggregation):
    """Exact number of distinct non-null values of ``field`` (keeps the set of values)."""

    field: str
    kind = "count_distinct"

    def initial(self) -> frozenset[Any]:
        return frozenset()

    def merge(self, a: frozenset[Any], b: frozenset[Any]) -> frozenset[Any]:
        return a | b if b else a

    def result(self, acc: frozenset[Any]) -> int:
        return len(acc)

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType:
        return pa.int64()

    def arrow_specs(self) -> list[ArrowSpec]:
        return [(self.field, "distinct", pc.CountOptions(mode="only_valid"))]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return [frozenset(v) for v in grouped.column(self.field, "distinct")]


@dataclass(frozen=True)
class First(Aggregation):
    """The non-null value of ``field`` with the smallest event time (earliest arrival on ties).

    The accumulator is ``(event_time, arrival_seq, value)`` or None.
    """

    field: str
    kind = "first"

    def initial(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return a if (a[0], a[1]) <= (b[0], b[1]) else b

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[2]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return _pick_per_group(grouped, self.field, last=False)


@dataclass(frozen=True)
class Last(Aggregation):
    """The non-null value of ``field`` with the largest event time (latest arrival on ties)."""

    field: str
    kind = "last"

    def initial(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return a if (a[0], a[1]) >= (b[0], b[1]) else b

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[2]

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        return _pick_per_group(grouped, self.field, last=True)


def _pick_per_group(grouped: GroupedBatch, field: str, *, last: bool) -> list[Any]:
    out: list[Any] = [None] * grouped.n_groups
    rows, groups = grouped.ordered(field, (grouped.ts, grouped.seq))
    if not len(rows):
        return out
    if last:
        pick = np.ones(len(groups), bool)
        pick[:-1] = groups[1:] != groups[:-1]
    else:
        pick = group_starts(groups)
    chosen = rows[pick]
    values = grouped.table.column(field).take(pa.array(chosen)).to_pylist()
    for g, r, v in zip(groups[pick].tolist(), chosen.tolist(), values, strict=True):
        out[g] = (int(grouped.ts[r]), int(grouped.seq[r]), v)
    return out


@dataclass(frozen=True)
class Collect(Aggregation):
    """The first ``limit`` non-null values of ``field`` in arrival order (a bounded list).

    The accumulator is a tuple of ``(arrival_seq, value)`` pairs sorted by ``arrival_seq``.
    """

    field: str
    limit: int = 100
    kind = "collect"

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError(f"collect(limit=...) must be a positive int, got {self.limit!r}")

    def initial(self) -> tuple[tuple[int, Any], ...]:
        return ()

    def merge(self, a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
        if not b:
            return a
        if not a:
            return b
        if a[-1][0] < b[0][0]:  # the common case: b arrived after a
            return (a + b)[: self.limit]
        return tuple(heapq.merge(a, b, key=lambda p: p[0]))[: self.limit]

    def result(self, acc: tuple[Any, ...]) -> list[Any]:
        return [v for _, v in acc]

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType | None:
        return None if field_type is None else pa.list_(field_type)

    def partials(self, grouped: GroupedBatch) -> list[Any]:
        out: list[Any] = [()] * grouped.n_groups
        rows, groups = grouped.ordered(self.field, (grouped.seq,))
        if not len(rows):
            return out
        starts = group_starts(groups)
        first_pos = np.maximum.accumulate(np.where(starts, np.arange(len(groups)), 0))
        keep = (np.arange(len(groups)) - first_pos) < self.limit
        rows, groups = rows[keep], groups[keep]
        values = grouped.table.column(self.field).take(pa.array(rows)).to_pylist()
        per_group: dict[int, list[tuple[int, Any]]] = {}
        for g, r, v in zip(groups.tolist(), rows.tolist(), values, strict=True):
            per_group.setdefault(g, []).append((int(grouped.seq[r]), v))
        for g, pairs in per_group.items():
            out[g] = tuple(pairs)
        return out


@dataclass(frozen=True)
class Custom(Aggregation):
    """A user reducer run in Python per record: ``add(acc, value_dict) -> acc``.

    ``initial()`` makes a new accumulator; ``merge(a, b)`` combines two (required by session
    windows, where a record can join sessions); ``result(acc)`` maps it to the emitted value.
    Records are added in arrival order. A raising function stops the task with
    :class:`~raystream.errors.UserFunctionError`.
    """

    initial_fn: Callable[[], Any]
    add_fn: Callable[[Any, Row], Any]
    merge_fn: Callable[[Any, Any], Any] | None = None
    result_fn: Callable[[Any], Any] | None = None
    kind = "custom"
    vectorised = False

    @property
    def mergeable(self) -> bool:  # type: ignore[override]
        return self.merge_fn is not None

    def fields(self) -> tuple[str, ...]:
        return ()

    def initial(self) -> Any:
        return _call("initial", self.initial_fn)

    def add(self, acc: Any, row: Row) -> Any:
        return _call("add", self.add_fn, acc, row)

    def merge(self, a: Any, b: Any) -> Any:
        if self.merge_fn is None:
            raise ConfigError("this custom aggregation has no merge function; pass merge=...")
        return _call("merge", self.merge_fn, a, b)

    def result(self, acc: Any) -> Any:
        return acc if self.result_fn is None else _call("result", self.result_fn, acc)

    def result_type(self, field_type: pa.DataType | None) -> pa.DataType | None:
        return None


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise UserFunctionError(
            f"custom aggregation {what} function {getattr(fn, '__name__', fn)!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def count(field: str | None = None) -> Aggregation:
    """Number of records (or of non-null values of ``field``)."""
    return Count(_field(field, "count", optional=True))


def sum(field: str) -> Aggregation:
    """Sum of the non-null values of ``field``."""
    return Sum(_field(field, "sum"))


def min(field: str) -> Aggregation:
    """Smallest non-null value of ``field``."""
    return Min(_field(field, "min"))


def max(field: str) -> Aggregation:
    """Largest non-null value of ``field``."""
    return Max(_field(field, "max"))


def mean(field: str) -> Aggregation:
    """Mean of the non-null values of ``field``."""
    return Mean(_field(field, "mean"))


def count_distinct(field: str) -> Aggregation:
    """Exact number of distinct non-null values of ``field``."""
    return CountDistinct(_field(field, "count_distinct"))


def first(field: str) -> Aggregation:
    """Value of ``field`` at the smallest event time (earliest arrival on ties)."""
    return First(_field(field, "first"))


def last(field: str) -> Aggregation:
    """Value of ``field`` at the largest event time (latest arrival on ties)."""
    return Last(_field(field, "last"))


def collect(field: str, limit: int = 100) -> Aggregation:
    """The first ``limit`` non-null values of ``field`` in arrival order."""
    return Collect(_field(field, "collect"), limit)


def custom(
    initial: Callable[[], Any],
    add: Callable[[Any, Row], Any],
    merge: Callable[[Any, Any], Any] | None = None,
    result: Callable[[Any], Any] | None = None,
) -> Aggregation:
    """A Python reducer: ``initial() -> acc``, ``add(acc, value) -> acc``, optional ``merge``
    (required for session windows) and ``result``."""
    for name, fn in (("initial", initial), ("add", add), ("merge", merge), ("result", result)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"custom(..., {name}=...) must be callable, got {fn!r}")
    return Custom(initial, add, merge, result)


def _field(field: str | None, fn: str, optional: bool = False) -> Any:
    if field is None and optional:
        return None
    if not isinstance(field, str) or not field:
        raise ConfigError(f"{fn}(field) needs a field name (a non-empty str), got {field!r}")
    return field


def normalize_aggs(
    aggs: Mapping[str, Aggregation] | Sequence[tuple[str, Aggregation]],
    reserved: Sequence[str] = (),
) -> tuple[tuple[str, Aggregation], ...]:
    """Aggregations as ``((name, aggregation), ...)``, validated (names unique, not reserved)."""
    pairs = list(aggs.items()) if isinstance(aggs, Mapping) else list(aggs)
    if not pairs:
        raise ConfigError("aggregate needs at least one aggregation, e.g. agg(n=count())")
    seen: set[str] = set()
    for name, agg in pairs:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"aggregation names must be non-empty strings, got {name!r}")
        if name in seen or name in reserved:
            raise ConfigError(
                f"aggregation name {name!r} is used twice or clashes with a result column "
                f"({', '.join(reserved)}); rename it"
            )
        if not isinstance(agg, Aggregation):
            raise ConfigError(
                f"aggregation {name!r} must be built by count(), sum(...), custom(...) etc., "
                f"got {type(agg).__name__}"
            )
        seen.add(name)
    return tuple(pairs)
