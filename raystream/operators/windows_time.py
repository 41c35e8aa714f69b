"""Tumbling and hopping window logic (spec: ``windows.WindowedAggregateSpec``).

Per batch, every (record, window) pair is computed with NumPy: the ``ceil(size / advance)``
candidate windows of each record, filtered by the per-record watermark (a window accepts a record
while ``end + grace > W``). The accepted pairs are grouped by (key, window start) and aggregated
with Arrow, then merged into the state, one entry per open window: ``(key, start) -> accs``.
Windows leave the state when the watermark closes them (``W >= end + grace``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from raystream.operators.aggregations_batch import group_ids
from raystream.operators.windows_common import Prepared, ResultRow, WindowOperatorBase

if TYPE_CHECKING:
    from raystream.operators.windows import WindowedAggregateSpec


def candidate_windows(
    ts: np.ndarray,
    wm: np.ndarray,
    size: int,
    advance: int,
    grace: int,
    arrival_order: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``(record, window start)`` pairs a batch adds to open windows.

    Returns the record index and window start of each pair (in arrival order when
    ``arrival_order``), which records some window accepted, and each record's latest window
    start (the bounds reported with late records).
    """
    last_start = np.floor_divide(ts, advance) * advance
    recs: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    accepted = np.zeros(len(ts), bool)
    for j in range(-(-size // advance)):
        start = last_start - j * advance
        end = start + size
        ok = (end > ts) & (end + grace > wm)
        idx = np.flatnonzero(ok)
        recs.append(idx)
        starts.append(start[idx])
        accepted |= ok
    rec = np.concatenate(recs)
    start = np.concatenate(starts)
    if arrival_order and len(recs) > 1:
        order = np.argsort(rec, kind="stable")  # arrival order, for custom reducers
        rec, start = rec[order], start[order]
    return rec, start, accepted, last_start


class TimeWindowAggregateOperator(WindowOperatorBase):
    """Aggregates per key over tumbling or hopping windows."""

    def __init__(self, name: str, spec: WindowedAggregateSpec) -> None:
        super().__init__(name, spec)
        self.size: int = spec.window.size_ms  # type: ignore[attr-defined]
        self.advance: int = getattr(spec.window, "advance_ms", self.size)
        # Open windows by start (ordered sets of keys) and a heap of those starts, to close
        # windows in time order without scanning the store.
        self._open: dict[int, dict[Any, None]] = {}
        self._heap: list[int] = []

    def open_windows(self) -> int:
        return len(self.store)

    def _absorb(self, p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        ts = p.ts
        rec, start, accepted, last_start = candidate_windows(
            ts, p.wm, self.size, self.advance, self.grace, arrival_order=True
        )
        size = self.size
        changed: list[tuple[Any, int]] = []
        if len(rec):
            gid, _, rep = group_ids(p.codes[rec], start)
            uniques = p.uniques
            changed = list(
                zip(
                    [uniques[c] for c in p.codes[rec[rep]].tolist()],
                    start[rep].tolist(),
                    strict=True,
                )
            )
            get = self.store.get
            accs: list[tuple[Any, ...]] = [get(skey) for skey in changed]
            # Built-in accumulators are immutable: new windows can share one initial tuple.
            shared = None if self._custom else self._initial()
            for g, current in enumerate(accs):
                if current is None:
                    accs[g] = self._initial() if shared is None else shared
                    self._index(*changed[g])
            folded = self._fold(accs, self._value_table(p, rec), gid, ts[rec], p.seq[rec])
            put = self.store.put
            for skey, acc in zip(changed, folded, strict=True):
                put(skey, acc)
        return ~accepted, last_start, last_start + size, changed

    def _index(self, key: Any, start: int) -> None:
        keys = self._open.get(start)
        if keys is None:
            keys = self._open[start] = {}
            heapq.heappush(self._heap, start)
        keys[key] = None

    def _rows(self, changed: list[Any]) -> list[ResultRow]:
        size = self.size
        return [(k, s, s + size, self.store.get((k, s)), s + size - 1) for k, s in changed]

    def _close(self, collect: bool) -> list[ResultRow]:
        rows: list[ResultRow] = []
        if self.watermark is None:
            return rows
        limit = self.watermark - self.size - self.grace  # closed when start <= limit
        while self._heap and self._heap[0] <= limit:
            s = heapq.heappop(self._heap)
            for key in self._open.pop(s):
                acc = self.store.get((key, s))
                self.store.delete((key, s))
                if collect:
                    rows.append((key, s, s + self.size, acc, s + self.size - 1))
        return rows

    def _rebuild_index(self) -> None:
        # One pass without a call per key: a recovery may rebuild millions of open windows.
        opened: dict[int, dict[Any, None]] = {}
        get = opened.get
        for key, start in cast(Iterator[tuple[Any, int]], self.store.keys()):
            keys = get(start)
            if keys is None:
                keys = opened[start] = {}
            keys[key] = None
        self._open = opened
        self._heap = list(opened)
        heapq.heapify(self._heap)
