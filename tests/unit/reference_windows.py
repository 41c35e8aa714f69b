"""A plain-Python, record-by-record reference of the windowed aggregate semantics.

Written from the definitions in ``raystream/operators/windows*.py`` docstrings, independently of
the vectorised implementation: windows keep their records as lists, aggregations are computed
from those lists when a row is emitted, the watermark is advanced one record at a time, windows
close (and are queued for emission) at the record that closes them, and results are flushed at
batch ends, as the operator does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raystream.operators.aggregations import Aggregation


@dataclass
class Rec:
    """One input record."""

    key: Any
    ts: int
    offset: int
    row: dict[str, Any]
    seq: int = 0
    wm: int = 0  # watermark right after the record arrived


Row = tuple[Any, ...]  # (key, window_start, window_end, *results)


def aggregate(agg: Aggregation, recs: Sequence[Rec]) -> Any:
    """The result of ``agg`` over ``recs`` (any order), by its definition."""
    kind = agg.kind
    f = getattr(agg, "field", None)
    recs = sorted(recs, key=lambda r: r.seq)
    vals = [r for r in recs if f is not None and r.row.get(f) is not None]
    xs = [r.row[f] for r in vals] if f is not None else []
    if kind == "count":
        return len(recs) if f is None else len(xs)
    if kind == "sum":
        return sum(xs) if xs else None
    if kind == "min":
        return min(xs) if xs else None
    if kind == "max":
        return max(xs) if xs else None
    if kind == "mean":
        return sum(xs) / len(xs) if xs else None
    if kind == "count_distinct":
        return len(set(xs))
    if kind == "first":
        return min(vals, key=lambda r: (r.ts, r.seq)).row[f] if vals else None
    if kind == "last":
        return max(vals, key=lambda r: (r.ts, r.seq)).row[f] if vals else None
    if kind == "collect":
        return xs[: agg.limit]  # type: ignore[attr-defined]
    if kind == "custom":
        acc = agg.initial_fn()  # type: ignore[attr-defined]
        for r in recs:
            acc = agg.add_fn(acc, r.row)  # type: ignore[attr-defined]
        return custom_result(agg, acc)
    raise AssertionError(kind)


def custom_result(agg: Aggregation, acc: Any) -> Any:
    fn = agg.result_fn  # type: ignore[attr-defined]
    return acc if fn is None else fn(acc)


@dataclass
class _Session:
    start: int
    end: int
    recs: list[Rec]
    custom: dict[int, Any] = field(default_factory=dict)  # agg index -> accumulator
    closed: bool = False


class ReferenceWindows:
    """Record-by-record model of ``WindowedAggregateSpec`` for one task."""

    def __init__(
        self,
        window: Any,
        aggs: Sequence[tuple[str, Aggregation]],
        grace: int,
        out_of_orderness: int,
        emit: str,
    ) -> None:
        self.kind = window.kind
        self.window = window
        self.aggs = [a for _, a in aggs]
        self.grace = grace
        self.ooo = out_of_orderness
        self.emit = emit
        self.w: int | None = None
        self.seq = 0
        self.dropped_null_keys = 0
        # Every window ever created, (key, start) -> records (sliding: content is computed),
        # and the closed ones; sessions keep a ``closed`` flag.
        self.windows: dict[tuple[Any, int], list[Rec]] = {}
        self.closed: set[tuple[Any, int]] = set()
        self.sliding_recs: dict[Any, list[Rec]] = {}
        self.sessions: dict[Any, list[_Session]] = {}
        self.pending: list[Row] = []  # closed during the current batch, emitted at its end
        self.touched: list[Any] = []

    # -- helpers ------------------------------------------------------------------------------

    def _row(self, key: Any, start: int, end: int, recs: list[Rec]) -> Row:
        return (key, start, end, *(aggregate(a, recs) for a in self.aggs))

    def _session_row(self, key: Any, s: _Session) -> Row:
        values = [
            custom_result(a, s.custom[i]) if a.kind == "custom" else aggregate(a, s.recs)
            for i, a in enumerate(self.aggs)
        ]
        return (key, s.start, s.end, *values)

    def _sliding_content(self, key: Any, start: int) -> list[Rec]:
        end = start + self.window.time_difference_ms
        return [
            r
            for r in self.sliding_recs.get(key, [])
            if start <= r.ts <= end and r.wm < end + 1 + self.grace
        ]

    # -- closing -------------------------------------------------------------------------------

    def _close_due(self) -> None:
        w = self.w
        assert w is not None
        if self.kind in ("tumbling", "hopping"):
            size = self.window.size_ms
            for (key, s), recs in self.windows.items():
                if (key, s) not in self.closed and s + size + self.grace <= w:
                    if self.emit == "final":
                        self.pending.append(self._row(key, s, s + size, recs))
                    self.closed.add((key, s))
        elif self.kind == "sliding":
            diff = self.window.time_difference_ms
            for key, s in self.windows:
                if (key, s) not in self.closed and s + diff + 1 + self.grace <= w:
                    if self.emit == "final":
                        self.pending.append(
                            self._row(key, s, s + diff, self._sliding_content(key, s))
                        )
                    self.closed.add((key, s))
        else:
            gap = self.window.gap_ms
            for key, sessions in self.sessions.items():
                for s in sessions:
                    if not s.closed and s.end + gap + 1 + self.grace <= w:
                        if self.emit == "final":
                            self.pending.append(self._session_row(key, s))
                        s.closed = True

    # -- records -------------------------------------------------------------------------------

    def _add(self, r: Rec) -> bool:
        """Process one record; False when it is late."""
        if self.kind in ("tumbling", "hopping"):
            size = self.window.size_ms
            adv = getattr(self.window, "advance_ms", size)
            accepted = False
            s = (r.ts // adv) * adv
            while s + size > r.ts:
                if s + size + self.grace > r.wm:
                    assert (r.key, s) not in self.closed, "a record reached a closed window"
                    self.windows.setdefault((r.key, s), []).append(r)
                    self.touched.append((r.key, s))
                    accepted = True
                s -= adv
            return accepted
        if self.kind == "sliding":
            return self._add_sliding(r)
        return self._add_session(r)

    def _add_sliding(self, r: Rec) -> bool:
        diff, grace = self.window.time_difference_ms, self.grace
        if r.ts + diff + 1 + grace <= r.wm:
            return False
        recs = self.sliding_recs.setdefault(r.key, [])
        recs.append(r)

        def create(start: int) -> None:
            if (r.key, start) not in self.windows:
                assert start + diff + 1 + grace > r.wm, "a window was created closed"
                self.windows[(r.key, start)] = []
                self.touched.append((r.key, start))

        if r.ts + 1 + grace > r.wm:
            create(r.ts - diff)
        for p in recs:
            start = p.ts + 1
            if (r.key, start) in self.windows:
                continue
            if any(p.ts < q.ts <= p.ts + 1 + diff and q.wm < p.ts + diff + 2 + grace for q in recs):
                create(start)
        for key, start in list(self.windows):
            end = start + diff
            if key == r.key and start <= r.ts <= end and r.wm < end + 1 + grace:
                assert (key, start) not in self.closed, "a record reached a closed window"
                self.touched.append((key, start))
        return True

    def _add_session(self, r: Rec) -> bool:
        gap, grace = self.window.gap_ms, self.grace
        sessions = self.sessions.setdefault(r.key, [])
        hits = sorted(
            (s for s in sessions if not s.closed and s.start - gap <= r.ts <= s.end + gap),
            key=lambda s: s.start,
        )
        if not hits and r.ts + gap + 1 + grace <= r.wm:
            return False
        new = _Session(
            min([r.ts, *(h.start for h in hits)]), max([r.ts, *(h.end for h in hits)]), []
        )
        for i, a in enumerate(self.aggs):
            if a.kind == "custom":
                acc = a.initial_fn()  # type: ignore[attr-defined]
                for h in hits:
                    acc = a.merge_fn(acc, h.custom[i])  # type: ignore[attr-defined]
                new.custom[i] = a.add_fn(acc, r.row)  # type: ignore[attr-defined]
        for h in hits:
            new.recs += h.recs
            sessions.remove(h)
        new.recs.append(r)
        sessions.append(new)
        self.touched.append((r.key, new))
        return True

    # -- public --------------------------------------------------------------------------------

    def process(self, records: Sequence[Rec]) -> tuple[list[Row], list[int]]:
        """One micro-batch; returns (result rows, offsets of late records)."""
        self.touched = []
        late: list[int] = []
        for r in records:
            if r.key is None:
                self.dropped_null_keys += 1
                continue
            r.seq = self.seq
            self.seq += 1
            t = r.ts - self.ooo
            self.w = t if self.w is None else max(self.w, t)
            r.wm = self.w
            self._close_due()  # windows closed by this record's watermark, before it is added
            if not self._add(r):
                late.append(r.offset)
        rows = self._update_rows() if self.emit == "update" else []
        rows += self.pending
        self.pending = []
        return rows, late

    def _update_rows(self) -> list[Row]:
        rows: list[Row] = []
        seen: list[Any] = []
        for item in self.touched:
            if any(item is x or item == x for x in seen):
                continue
            seen.append(item)
            key, w = item
            if self.kind == "session":
                if any(w is s for s in self.sessions.get(key, [])):  # not merged away
                    rows.append(self._session_row(key, w))
            elif self.kind == "sliding":
                diff = self.window.time_difference_ms
                rows.append(self._row(key, w, w + diff, self._sliding_content(key, w)))
            else:
                size = self.window.size_ms
                rows.append(self._row(key, w, w + size, self.windows[(key, w)]))
        return rows

    def on_watermark(self, wm: int) -> list[Row]:
        """The task watermark advanced to ``wm``: final rows of the windows it closes."""
        if self.w is not None and wm <= self.w:
            return []
        self.w = wm
        self._close_due()
        rows, self.pending = self.pending, []
        return rows
