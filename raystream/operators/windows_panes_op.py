"""Tumbling and hopping windows over columnar panes (state: ``windows_panes``).

The same windows, watermark, grace, late records and emit modes as
``windows_time.TimeWindowAggregateOperator``, which keeps one Python tuple per open window and
remains the path of the aggregations panes cannot hold (``count_distinct``, ``first``,
``last``, ``collect``, ``custom``). Here a batch's ``(record, window)`` pairs are grouped and
aggregated with Arrow as there, then merged into one pane per window start with NumPy, and a
closed pane becomes its result columns directly.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raystream.operators.aggregations import Mean
from raystream.operators.aggregations_batch import GroupedBatch, group_ids
from raystream.operators.base import Batch
from raystream.operators.windows_common import (
    AggregateSnapshot,
    Prepared,
    WindowOperatorBase,
    _column,
)
from raystream.operators.windows_panes import Pane, PaneStore, components, partial_arrays
from raystream.operators.windows_time import candidate_windows

if TYPE_CHECKING:
    from raystream.operators.windows import WindowedAggregateSpec

#: Result rows of one pane: the pane and the slots to emit (None: every window of the pane).
Chunk = tuple[Pane, np.ndarray | None]


class PaneWindowAggregateOperator(WindowOperatorBase):
    """Aggregates per key over tumbling or hopping windows, state held in columnar panes."""

    def __init__(self, name: str, spec: WindowedAggregateSpec) -> None:
        super().__init__(name, spec)
        self.size: int = spec.window.size_ms  # type: ignore[attr-defined]
        self.advance: int = getattr(spec.window, "advance_ms", self.size)
        self._comps = components(self.aggs)
        self._specs = [c.spec for c in self._comps]
        self.panes = PaneStore(self._comps, [len(a.arrow_specs()) for a in self.aggs])
        self.store = self.panes  # type: ignore[assignment]
        self._heap: list[int] = []  # starts of the open panes

    def open_windows(self) -> int:
        return self.panes.windows()

    def _absorb(self, p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        rec, start, accepted, last_start = candidate_windows(
            p.ts, p.wm, self.size, self.advance, self.grace
        )
        touched: list[Chunk] = []
        if len(rec):
            codes = p.codes[rec]
            gid, n_groups, rep = group_ids(codes, start)
            table = self._value_table(p, rec)
            grouped = GroupedBatch(table, gid, n_groups, p.ts[rec], p.seq[rec], self._specs)
            parts = partial_arrays(grouped, self._comps)
            g_codes, g_start = codes[rep], start[rep]
            order = np.argsort(g_start, kind="stable")
            cuts = np.flatnonzero(np.diff(g_start[order])) + 1
            uniques = p.uniques
            for sel in np.split(order, cuts):
                s = int(g_start[sel[0]])
                pane, new = self.panes.pane(s)
                if new:
                    heapq.heappush(self._heap, s)
                slots = pane.slots([uniques[c] for c in g_codes[sel].tolist()])
                for j, comp in enumerate(self._comps):
                    values, valid = parts[j]
                    pane.merge(
                        j, comp.op, slots, values[sel], None if valid is None else valid[sel]
                    )
                touched.append((pane, slots))
        return ~accepted, last_start, last_start + self.size, touched

    def _rows(self, changed: list[Any]) -> list[Any]:
        return changed

    def _close(self, collect: bool) -> list[Any]:
        chunks: list[Chunk] = []
        if self.watermark is None:
            return chunks
        limit = self.watermark - self.size - self.grace  # closed when start <= limit
        while self._heap and self._heap[0] <= limit:
            pane = self.panes.pop(heapq.heappop(self._heap))
            if pane is not None and collect and len(pane):
                chunks.append((pane, None))
        return chunks

    def _rebuild_index(self) -> None:
        self._heap = self.panes.starts()
        heapq.heapify(self._heap)

    # -- output --------------------------------------------------------------------------------

    def _result_batch(self, rows: Sequence[Any], windowed: bool = True) -> Batch | None:
        chunks: Sequence[Chunk] = rows
        if not chunks:
            return None
        keys: list[Any] = []
        starts: list[np.ndarray] = []
        pieces: list[list[tuple[np.ndarray, np.ndarray | None]]] = [[] for _ in self._comps]
        for pane, slots in chunks:
            if slots is None:
                keys.extend(pane.keys)
            else:
                own = pane.keys
                keys.extend([own[i] for i in slots.tolist()])
            starts.append(np.full(len(pane) if slots is None else len(slots), pane.start))
            for j in range(len(self._comps)):
                values, seen = pane.column(j)
                if slots is not None:
                    values = values[slots]
                    seen = None if seen is None else seen[slots]
                pieces[j].append((values, seen))
        start = np.concatenate(starts).astype(np.int64, copy=False)
        end = start + self.size
        key_arr = pa.array(keys, type=self._key_type)
        cols: dict[str, pa.Array] = {
            self.key_name: key_arr,
            "window_start": pa.array(start, pa.int64()),
            "window_end": pa.array(end, pa.int64()),
        }
        j = 0
        for name, agg in zip(self.names, self.aggs, strict=True):
            field = agg.fields()[0] if agg.fields() else ""
            typ = agg.result_type(self._field_types.get(field))
            if isinstance(agg, Mean):
                cols[name] = _mean_column(_joined(pieces[j]), _joined(pieces[j + 1]))
                j += 2
            else:
                cols[name] = _np_column(*_joined(pieces[j]), typ, name)
                j += 1
        return Batch(
            pa.RecordBatch.from_pydict(cols),
            key_arr,
            pa.array(end - 1, pa.int64()),
            pa.nulls(len(keys), pa.int64()),
        )

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self, with_stores: bool = True) -> AggregateSnapshot:
        snap = super().snapshot(with_stores=False)
        if not with_stores:
            return snap
        items = tuple((s, p.copy()) for s, p in self.panes.items())
        return dataclasses.replace(snap, items=items)

    def restore(
        self, state: Any, stores: Sequence[Iterable[tuple[Hashable, Any]]] | None = None
    ) -> None:
        if stores is None and isinstance(state, AggregateSnapshot):
            # A snapshot restored in place keeps its panes unchanged for the next restore.
            items = tuple((k, v.copy() if isinstance(v, Pane) else v) for k, v in state.items)
            state = dataclasses.replace(state, items=items)
        super().restore(state, stores)


def _joined(
    pieces: list[tuple[np.ndarray, np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray | None]:
    """One component's pieces from several panes as one array (and seen mask)."""
    if len(pieces) == 1:
        return pieces[0]
    dtypes = {v.dtype for v, _ in pieces}
    if len(dtypes) > 1:
        target = np.dtype(object) if np.dtype(object) in dtypes else np.dtype(np.float64)
        pieces = [(v.astype(target), s) for v, s in pieces]
        if target == np.dtype(object):
            pieces = [(_nones_where_unseen(v, s), s) for v, s in pieces]
    values = np.concatenate([v for v, _ in pieces])
    if all(s is None for _, s in pieces):
        return values, None
    seen = np.concatenate([np.ones(len(v), bool) if s is None else s for v, s in pieces])
    return values, seen


def _nones_where_unseen(values: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
    if seen is not None:
        values = values.copy()
        values[~seen] = None
    return values


def _np_column(
    values: np.ndarray, seen: np.ndarray | None, typ: pa.DataType | None, name: str
) -> pa.Array:
    """A result column from component values, null where ``seen`` is False."""
    if values.dtype == np.dtype(object) or (seen is not None and not seen.any()):
        listed = values.tolist()
        if seen is not None:
            listed = [v if s else None for v, s in zip(listed, seen.tolist(), strict=True)]
        return _column(listed, typ, name)
    mask = None if seen is None else ~seen
    if typ is not None and not (values.dtype.kind == "f" and pa.types.is_integer(typ)):
        try:
            return pa.array(values, type=typ, mask=mask)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            pass
    return pa.array(values, mask=mask)


def _mean_column(
    sums: tuple[np.ndarray, np.ndarray | None], counts: tuple[np.ndarray, np.ndarray | None]
) -> pa.Array:
    total, _ = sums
    n = counts[0]
    if total.dtype == np.dtype(object) or n.dtype == np.dtype(object):
        pairs = zip(total.tolist(), n.tolist(), strict=True)
        return pa.array([None if c == 0 else float(s) / c for s, c in pairs], pa.float64())
    has = n > 0
    out = np.zeros(len(n), np.float64)
    np.divide(total.astype(np.float64), n, out=out, where=has)
    return pa.array(out, pa.float64(), mask=~has)
