"""Sliding window logic, Kafka Streams' ``SlidingWindows`` (spec: ``WindowedAggregateSpec``).

Definitions (``diff`` = time difference; windows ``[s, s + diff]`` inclusive, known by ``s``):

* A record at ``t`` arriving with watermark ``w`` (the watermark right after it) *contributes* to
  window ``[s, e]`` when ``s <= t <= e`` and the window is open at its arrival: ``w < e + 1 +
  grace``. A record is *late* (port 1) when ``t + diff + 1 + grace <= w``: no window that could
  hold it is open.
* Windows are created only by arrivals, only while open: the *left* window ``[t - diff, t]`` of a
  record it contributes to, and the *right* window ``[p + 1, p + 1 + diff]`` of a record ``p`` once
  some record contributes to it (Kafka Streams creates right windows only when not empty).
* A window's value aggregates every record that contributed to it; with ``emit="final"`` it is
  emitted once, when ``W >= end + 1 + grace``.

For in-order data this is exactly Kafka Streams' set of windows. Kafka Streams derives a new
window's aggregate from neighbouring windows; here the state keeps, per key, the records that can
still reach an open window (an Arrow table) and the open windows' starts, and computes window
values from the records with one vectorised pass per batch. Records leave the state when
``t + diff + 2 + grace <= W`` (their right window is closed too).
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raystream.operators.windows_common import Prepared, ResultRow, WindowOperatorBase

if TYPE_CHECKING:
    from raystream.operators.windows import WindowedAggregateSpec

_BIG = 2**62
_META = ["__ts", "__wm", "__seq"]


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min(values[lo[i]:hi[i]])`` per i (``_BIG`` for empty ranges), without a Python loop."""
    out = np.full(len(lo), _BIG, np.int64)
    nonempty = np.flatnonzero(hi > lo)
    if len(nonempty):
        ext = np.append(values, _BIG)
        bounds = np.empty(2 * len(nonempty), np.int64)
        bounds[0::2] = lo[nonempty]
        bounds[1::2] = hi[nonempty]
        out[nonempty] = np.minimum.reduceat(ext, bounds)[0::2]
    return out


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int64)


class SlidingAggregateOperator(WindowOperatorBase):
    """Aggregates per key over Kafka Streams sliding windows."""

    def __init__(self, name: str, spec: WindowedAggregateSpec) -> None:
        super().__init__(name, spec)
        self.diff: int = spec.window.time_difference_ms  # type: ignore[attr-defined]
        # (time, tie, key, window start or None for "drop expired records of key")
        self._heap: list[tuple[int, int, Any, int | None]] = []
        self._tie = itertools.count()

    def open_windows(self) -> int:
        return sum(len(starts) for _, (_, starts) in self.store.items())

    def _push(self, at: int, key: Any, start: int | None) -> None:
        heapq.heappush(self._heap, (at, next(self._tie), key, start))

    def _absorb(self, p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        diff, grace = self.diff, self.grace
        admitted = p.ts + diff + 1 + grace > p.wm
        idx = np.flatnonzero(admitted)
        changed: list[Any] = []
        if len(idx):
            values = self._value_table(p, idx)
            table = pa.table({"__ts": p.ts[idx], "__wm": p.wm[idx], "__seq": p.seq[idx]})
            for name in values.column_names:  # after the meta columns: they carry the row count
                table = table.append_column(name, values.column(name))
            codes = p.codes[idx]
            order = np.argsort(codes, kind="stable")
            bounds = np.flatnonzero(np.diff(codes[order])) + 1
            for rows in np.split(order, bounds):
                key = p.uniques[codes[rows[0]]]
                changed += self._add_records(key, table.take(pa.array(rows)), int(p.seq[0]))
        return ~admitted, p.ts - diff, p.ts, changed

    def _add_records(self, key: Any, new: pa.Table, seq0: int) -> list[tuple[Any, int]]:
        diff, grace = self.diff, self.grace
        old = self.store.get(key)
        existing: set[int] = set(old[1]) if old else set()
        recs = pa.concat_tables([old[0], new], promote_options="permissive") if old else new
        recs = recs.sort_by([("__ts", "ascending"), ("__seq", "ascending")])
        ts, wm, seq = _col(recs, "__ts"), _col(recs, "__wm"), _col(recs, "__seq")
        is_new = seq >= seq0
        created: set[int] = set((ts[is_new & (ts + 1 + grace > wm)] - diff).tolist())
        # Right windows [p+1, p+1+diff]: created in this batch when p is new and any record
        # contributes, or when a new record contributes.
        p_ts, first = np.unique(ts, return_index=True)
        p_new = np.logical_and.reduceat(is_new, first)
        lo = np.searchsorted(ts, p_ts, "right")
        hi = np.searchsorted(ts, p_ts + 1 + diff, "right")
        bound = p_ts + diff + 2 + grace
        any_c = _range_min(wm, lo, hi) < bound
        new_c = _range_min(np.where(is_new, wm, _BIG), lo, hi) < bound
        created |= set((p_ts[(p_new & any_c) | new_c] + 1).tolist())
        created -= existing
        starts = sorted(existing | created)
        for s in created:
            self._push(s + diff + 1 + grace, key, s)
        self._push(int(ts[-1]) + diff + 2 + grace, key, None)
        self.store.put(key, (recs, tuple(starts)))
        if self.final:
            return []
        touched = set(created)
        if existing:
            sarr = np.array(starts, np.int64)
            nt, nw = ts[is_new], wm[is_new]
            a = np.searchsorted(sarr, np.maximum(nt - diff, nw - grace - diff), "left")
            b = np.searchsorted(sarr, nt, "right")
            keep = a < b
            marks = np.zeros(len(sarr) + 1, np.int64)
            np.add.at(marks, a[keep], 1)
            np.add.at(marks, b[keep], -1)
            touched |= set(sarr[np.cumsum(marks)[:-1] > 0].tolist())
        return [(key, s) for s in sorted(touched)]

    def _rows(self, changed: list[Any]) -> list[ResultRow]:
        """Values of the windows ``[(key, start), ...]`` computed from the buffered records."""
        diff, grace = self.diff, self.grace
        by_key: dict[Any, list[int]] = {}
        for key, s in changed:
            by_key.setdefault(key, []).append(s)
        tables: list[pa.Table] = []
        gids: list[np.ndarray] = []
        wins: list[tuple[Any, int]] = []
        for key, starts in by_key.items():
            recs, _ = self.store.get(key)
            ts, wm, seq = _col(recs, "__ts"), _col(recs, "__wm"), _col(recs, "__seq")
            s = np.array(starts, np.int64)
            e = s + diff
            lo = np.searchsorted(ts, s, "left")
            hi = np.searchsorted(ts, e, "right")
            lens = hi - lo
            win = np.repeat(np.arange(len(s)), lens)
            rec = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            rec += np.repeat(lo, lens)
            ok = wm[rec] < e[win] + 1 + grace
            win, rec = win[ok], rec[ok]
            order = np.lexsort((seq[rec], win))
            win, rec = win[order], rec[order]
            present, dense = np.unique(win, return_inverse=True)
            tables.append(recs.take(pa.array(rec)))
            gids.append(dense + len(wins))
            wins += [(key, int(s[w])) for w in present]
        if not wins:
            return []
        table = pa.concat_tables(tables, promote_options="permissive")
        ts_all, seq_all = _col(table, "__ts"), _col(table, "__seq")
        accs = self._fold(
            [self._initial()] * len(wins),
            table.drop_columns(_META),
            np.concatenate(gids),
            ts_all,
            seq_all,
        )
        return [(k, s, s + diff, acc, s + diff) for (k, s), acc in zip(wins, accs, strict=True)]

    def _close(self, collect: bool) -> list[ResultRow]:
        w = self.watermark
        closing: list[tuple[Any, int]] = []
        expire: dict[Any, None] = {}
        while w is not None and self._heap and self._heap[0][0] <= w:
            _, _, key, start = heapq.heappop(self._heap)
            expire[key] = None
            if start is not None:
                state = self.store.get(key)
                if state is not None and start in state[1]:
                    closing.append((key, start))
        rows = self._rows(closing) if collect and closing else []
        gone: dict[Any, set[int]] = {}
        for key, s in closing:
            gone.setdefault(key, set()).add(s)
        for key in expire:
            state = self.store.get(key)
            if state is None:
                continue
            recs, starts = state
            starts = tuple(s for s in starts if s not in gone.get(key, ()))
            alive = _col(recs, "__ts") + self.diff + 2 + self.grace > w
            if not alive.all():
                recs = recs.filter(pa.array(alive))
            if recs.num_rows or starts:
                self.store.put(key, (recs, starts))
            else:
                self.store.delete(key)
        return rows

    def _rebuild_index(self) -> None:
        self._heap = []
        for key, (recs, starts) in self.store.items():
            for s in starts:
                self._push(s + self.diff + 1 + self.grace, key, s)
            if recs.num_rows:
                self._push(int(_col(recs, "__ts").max()) + self.diff + 2 + self.grace, key, None)
