"""The vectorised core of aggregations: group a micro-batch and aggregate it with Arrow.

:func:`batch_partials` runs one ``pyarrow`` ``group_by`` for every Arrow hash aggregate the
aggregations declare (``Aggregation.arrow_specs``), and gives each aggregation a
:class:`GroupedBatch` to read its per-group partial accumulators from (the order-sensitive ones,
``first``/``last``/``collect``, sort with NumPy instead). :func:`group_ids` numbers groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from raystream.operators.aggregations import Aggregation

#: ``(field, arrow hash function, options)``; ``field`` is None for ``count_all``.
ArrowSpec = tuple[str | None, str, pc.FunctionOptions | None]


class GroupedBatch:
    """One micro-batch's rows assigned to ``n_groups`` groups, with the Arrow aggregates computed.

    ``table`` holds the value columns, ``gid`` the group (0..n_groups-1) of each row, ``ts`` and
    ``seq`` each row's event time and arrival sequence number.
    """

    def __init__(
        self,
        table: pa.Table,
        gid: np.ndarray,
        n_groups: int,
        ts: np.ndarray,
        seq: np.ndarray,
        specs: Sequence[ArrowSpec],
    ) -> None:
        self.table = table
        self.gid = gid
        self.n_groups = n_groups
        self.ts = ts
        self.seq = seq
        self._arrays: dict[tuple[str | None, str], pa.Array] = {}
        self._columns: dict[tuple[str | None, str], list[Any]] = {}
        unique: dict[tuple[str | None, str], ArrowSpec] = {}
        for spec in specs:
            unique.setdefault((spec[0], spec[1]), spec)
        if unique and len(gid):
            self._aggregate(list(unique.values()))

    def _aggregate(self, specs: list[ArrowSpec]) -> None:
        fields = sorted({f for f, _, _ in specs if f is not None})
        # Built from the group ids: a table without columns (count() alone) has no row count.
        t = pa.table({"__gid": pa.array(self.gid, pa.int64())})
        for f in fields:
            col = self.table.column(f)
            if pa.types.is_null(col.type):
                # An all-null column: Arrow's hash kernels crash on the null type (pyarrow 26).
                col = pa.nulls(len(self.gid), pa.int64())
            t = t.append_column(f, col)
        aggs: list[Any] = [
            ([], "count_all") if f is None else (f, fn, opts) if opts else (f, fn)
            for f, fn, opts in specs
        ]
        out = t.group_by("__gid", use_threads=False).aggregate(aggs)
        pos = out.column("__gid").to_numpy()
        inv = np.empty(self.n_groups, np.int64)
        inv[pos] = np.arange(len(pos))
        take = pa.array(inv)
        for field, fn, _ in specs:
            name = "count_all" if field is None else f"{field}_{fn}"
            self._arrays[(field, fn)] = out.column(name).combine_chunks().take(take)

    def array(self, field: str | None, fn: str) -> pa.Array:
        """The per-group result of Arrow's hash ``fn`` over ``field``, as an Arrow array."""
        if not len(self.gid):
            return pa.array([], pa.int64())
        return self._arrays[(field, fn)]

    def column(self, field: str | None, fn: str) -> list[Any]:
        """The per-group result of Arrow's hash ``fn`` over ``field`` (declared in arrow_specs)."""
        if not len(self.gid):
            return []
        got = self._columns.get((field, fn))
        if got is None:
            got = self._columns[(field, fn)] = self._arrays[(field, fn)].to_pylist()
        return got

    def ordered(self, field: str, keys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Row indices with a non-null ``field`` sorted by group then ``keys``; and their groups."""
        valid = self.table.column(field).is_valid().to_numpy(zero_copy_only=False)
        idx = np.flatnonzero(valid)
        order = np.lexsort((*(k[idx] for k in reversed(keys)), self.gid[idx]))
        rows = idx[order]
        return rows, self.gid[rows]


def group_starts(groups: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each run of equal values in sorted ``groups``."""
    first = np.ones(len(groups), bool)
    first[1:] = groups[1:] != groups[:-1]
    return first


def batch_partials(
    aggs: Sequence[Aggregation],
    table: pa.Table,
    gid: np.ndarray,
    n_groups: int,
    ts: np.ndarray,
    seq: np.ndarray,
) -> list[list[Any] | None]:
    """Per vectorised aggregation, one partial accumulator per group (None for ``custom``).

    Every group in ``0..n_groups-1`` must have at least one row.
    """
    specs = [s for a in aggs if a.vectorised for s in a.arrow_specs()]
    grouped = GroupedBatch(table, gid, n_groups, ts, seq, specs)
    return [a.partials(grouped) if a.vectorised else None for a in aggs]


def group_ids(*columns: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Dense group ids for rows keyed by ``columns`` (equal-length int arrays).

    Returns ``(gid per row, number of groups, index of one representative row per group)``;
    groups are numbered in sorted key order.
    """
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, np.int64), 0, np.zeros(0, np.int64)
    order = np.lexsort(tuple(reversed(columns)))
    new = np.zeros(n, bool)
    new[0] = True
    for col in columns:
        c = col[order]
        new[1:] |= c[1:] != c[:-1]
    gid_sorted = np.cumsum(new) - 1
    gid = np.empty(n, np.int64)
    gid[order] = gid_sorted
    return gid, int(gid_sorted[-1]) + 1, order[new]
