"""Session window logic (spec: :class:`~raystream.operators.windows.WindowedAggregateSpec`).

A session is ``[start, end]`` (inclusive record times). A record at ``t`` joins every *open*
session with ``start - gap <= t <= end + gap`` (merging them when it bridges several, as Kafka
Streams does: ``merge`` the found sessions' accumulators in start order into a new one, then add
the record). A session closes when ``W >= end + gap + 1 + grace``; closed sessions are final and
leave the state, so a later record within ``gap`` of a closed session starts a new session (Kafka
Streams can still merge into a session whose final result was already emitted). A record that
joins no open session and whose own session ``[t, t]`` would already be closed is late.

Session boundaries are decided in a loop over the batch's timestamps (integer work per record);
the built-in aggregations of each resulting session are then computed with one vectorised pass.
State: ``key -> ((start, end, accs), ...)`` sorted by start.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from raystream.operators.windows_common import Prepared, ResultRow, WindowOperatorBase

if TYPE_CHECKING:
    from raystream.operators.windows import WindowedAggregateSpec


class _Work:
    """A session while a batch is processed; ``accs`` exclude ``members`` for vectorised aggs."""

    __slots__ = ("accs", "dirty", "end", "members", "start")

    def __init__(
        self, start: int, end: int, accs: list[Any], members: list[int], dirty: bool
    ) -> None:
        self.start = start
        self.end = end
        self.accs = accs
        self.members = members
        self.dirty = dirty


class SessionAggregateOperator(WindowOperatorBase):
    """Aggregates per key over session windows."""

    def __init__(self, name: str, spec: WindowedAggregateSpec) -> None:
        super().__init__(name, spec)
        self.gap: int = spec.window.gap_ms  # type: ignore[attr-defined]
        # (close time, tie, key, start, end); stale entries (merged sessions) are skipped.
        self._heap: list[tuple[int, int, Any, int, int]] = []
        self._tie = itertools.count()

    def open_windows(self) -> int:
        return sum(len(v) for _, v in self.store.items())

    def _close_time(self, end: int) -> int:
        return end + self.gap + 1 + self.grace

    def _absorb(self, p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        gap = self.gap
        n = len(p.ts)
        rows = self._value_table(p, np.arange(n)).to_pylist() if self._custom else []
        work: dict[int, list[_Work]] = {}
        late = np.zeros(n, bool)
        triples = zip(p.codes.tolist(), p.ts.tolist(), p.wm.tolist(), strict=True)
        for i, (c, t, w) in enumerate(triples):
            sessions = work.get(c)
            if sessions is None:
                stored = self.store.get(p.uniques[c], ())
                sessions = work[c] = [_Work(s, e, list(a), [], False) for s, e, a in stored]
            hits = [
                x
                for x in sessions
                if self._close_time(x.end) > w and x.start - gap <= t <= x.end + gap
            ]
            if not hits:
                if self._close_time(t) <= w:
                    late[i] = True
                    continue
                new = _Work(t, t, list(self._initial()), [i], True)
            else:
                hits.sort(key=lambda x: x.start)
                accs = list(self._initial())
                for h in hits:
                    accs = [a.merge(x, y) for a, x, y in zip(self.aggs, accs, h.accs, strict=True)]
                members = [m for h in hits for m in h.members] + [i]
                new = _Work(
                    min(t, hits[0].start), max([t] + [h.end for h in hits]), accs, members, True
                )
                sessions[:] = [x for x in sessions if all(x is not h for h in hits)]
            for ci in self._custom:
                new.accs[ci] = self.aggs[ci].add(new.accs[ci], rows[i])
            sessions.append(new)
        changed = self._write_back(p, work)
        return late, p.ts, p.ts, changed

    def _write_back(self, p: Prepared, work: dict[int, list[_Work]]) -> list[Any]:
        dirty = [(c, x) for c, sessions in work.items() for x in sessions if x.dirty]
        if dirty:
            rec = np.array([m for _, x in dirty for m in sorted(x.members)], np.int64)
            gid = np.repeat(np.arange(len(dirty)), [len(x.members) for _, x in dirty])
            folded = self._fold(
                [tuple(x.accs) for _, x in dirty],
                self._value_table(p, rec),
                gid,
                p.ts[rec],
                p.seq[rec],
                with_custom=False,
            )
            for (_, x), acc in zip(dirty, folded, strict=True):
                x.accs = list(acc)
        changed: list[Any] = []
        for c, sessions in work.items():
            key = p.uniques[c]
            if sessions:
                sessions.sort(key=lambda x: x.start)
                self.store.put(key, tuple((x.start, x.end, tuple(x.accs)) for x in sessions))
            else:
                self.store.delete(key)
            for x in sessions:
                if x.dirty:
                    self._push(key, x.start, x.end)
                    changed.append((key, x.start, x.end))
        return changed

    def _push(self, key: Any, start: int, end: int) -> None:
        heapq.heappush(self._heap, (self._close_time(end), next(self._tie), key, start, end))

    def _rows(self, changed: list[Any]) -> list[ResultRow]:
        rows: list[ResultRow] = []
        for key, start, end in changed:
            for s, e, acc in self.store.get(key, ()):
                if s == start and e == end:
                    rows.append((key, s, e, acc, e))
        return rows

    def _close(self, collect: bool) -> list[ResultRow]:
        rows: list[ResultRow] = []
        w = self.watermark
        while w is not None and self._heap and self._heap[0][0] <= w:
            _, _, key, start, end = heapq.heappop(self._heap)
            sessions = self.store.get(key, ())
            keep = tuple(x for x in sessions if not (x[0] == start and x[1] == end))
            if len(keep) == len(sessions):
                continue  # merged into another session since it was pushed
            if keep:
                self.store.put(key, keep)
            else:
                self.store.delete(key)
            if collect:
                acc = next(x[2] for x in sessions if x[0] == start and x[1] == end)
                rows.append((key, start, end, acc, end))
        return rows

    def _rebuild_index(self) -> None:
        self._heap = []
        for key, sessions in self.store.items():
            for start, end, _ in sessions:
                self._push(key, start, end)
