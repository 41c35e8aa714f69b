"""Plain-Python, record-by-record references of every join, written from the joins' docstrings.

They share no code with ``raystream/operators/joins_*.py``: tables are dicts, versioned histories
are dicts of every version ever accepted (never pruned: the horizon rule alone must make pruning
invisible), and the stream-stream reference keeps every record forever (never evicted: it checks
that eviction loses no pair) and emits an unmatched record when the watermark passes
``t + before + after + 1 + grace``, one record at a time.

Every output record is a tuple ``(key, timestamp, offset, left row | None, right row | None)``,
plus ``tombstone`` for changelog outputs; a side's row is None when that side has no record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
Out = tuple[Any, ...]


@dataclass
class Rec:
    """One input record; ``row`` None is a tombstone (for changelog inputs)."""

    key: Any
    ts: int | None
    offset: int
    row: Row | None


class RefTable:
    """Latest value per key, in processing order."""

    def __init__(self) -> None:
        self.data: dict[Any, tuple[Row, int | None]] = {}

    def apply(self, r: Rec) -> tuple[Any, Any] | None:
        """(old, new) entries when ``r`` changed the table, else None."""
        if r.key is None:
            return None
        old = self.data.get(r.key)
        if r.row is None:
            if old is None:
                return None
            del self.data[r.key]
            return old, None
        self.data[r.key] = (r.row, r.ts)
        return old, (r.row, r.ts)


def materialise(table: RefTable, recs: Sequence[Rec]) -> list[Out]:
    """The table's changelog: ``(key, ts, offset, row | None, tombstone)``."""
    out: list[Out] = []
    for r in recs:
        change = table.apply(r)
        if change is not None:
            out.append((r.key, r.ts, r.offset, r.row, r.row is None))
    return out


class RefLookupJoin:
    """Stream-table (``on`` None: the stream key) or stream-global-table (``on``: a field)."""

    def __init__(self, how: str, on: str | None = None) -> None:
        self.how = how
        self.on = on
        self.table = RefTable()

    def right(self, recs: Sequence[Rec]) -> list[Out]:
        for r in recs:
            self.table.apply(r)
        return []

    def left(self, recs: Sequence[Rec]) -> list[Out]:
        out: list[Out] = []
        for r in recs:
            assert r.row is not None
            key = r.key if self.on is None else r.row.get(self.on)
            entry = None if key is None else self.table.data.get(key)
            if entry is None and self.how == "inner":
                continue
            out.append((r.key, r.ts, r.offset, r.row, None if entry is None else entry[0]))
        return out


class RefVersionedJoin:
    """As-of join against every accepted version; lookups older than the horizon find nothing."""

    def __init__(self, how: str, retention: int) -> None:
        self.how = how
        self.retention = retention
        self.t: int | None = None
        self.versions: dict[Any, dict[int, Row | None]] = {}

    def right(self, recs: Sequence[Rec]) -> list[Out]:
        for r in recs:
            if r.key is None or r.ts is None:
                continue
            self.t = r.ts if self.t is None else max(self.t, r.ts)
            if r.ts < self.t - self.retention:
                continue
            self.versions.setdefault(r.key, {})[r.ts] = r.row
        return []

    def _value(self, r: Rec) -> Row | None:
        if r.key is None or r.ts is None:
            return None
        if self.t is not None and r.ts < self.t - self.retention:
            return None
        history = self.versions.get(r.key, {})
        valid = [vf for vf in history if vf <= r.ts]
        return history[max(valid)] if valid else None

    def left(self, recs: Sequence[Rec]) -> list[Out]:
        out: list[Out] = []
        for r in recs:
            value = self._value(r)
            if value is None and self.how == "inner":
                continue
            out.append((r.key, r.ts, r.offset, r.row, value))
        return out


class RefTableTableJoin:
    """The joined table's changelog, recomputed per change."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.tables = {"left": RefTable(), "right": RefTable()}

    def _exists(self, left: Any, right: Any) -> bool:
        if self.how == "inner":
            return left is not None and right is not None
        if self.how == "left":
            return left is not None
        return left is not None or right is not None

    def changes(self, side: str, recs: Sequence[Rec]) -> list[Out]:
        other = self.tables["right" if side == "left" else "left"]
        out: list[Out] = []
        for r in recs:
            change = self.tables[side].apply(r)
            if change is None:
                continue
            old, new = change
            o = other.data.get(r.key)
            before = self._exists(old, o) if side == "left" else self._exists(o, old)
            lnew, rnew = (new, o) if side == "left" else (o, new)
            times = [t for t in (r.ts, None if o is None else o[1]) if t is not None]
            ts = max(times) if times else None
            if self._exists(lnew, rnew):
                out.append(
                    (
                        r.key,
                        ts,
                        r.offset,
                        None if lnew is None else lnew[0],
                        None if rnew is None else rnew[0],
                        False,
                    )
                )
            elif before:
                out.append((r.key, ts, r.offset, None, None, True))
        return out

    def left(self, recs: Sequence[Rec]) -> list[Out]:
        return self.changes("left", recs)

    def right(self, recs: Sequence[Rec]) -> list[Out]:
        return self.changes("right", recs)


@dataclass
class _Held:
    side: str
    rec: Rec
    matched: bool = False
    done: bool = False  # its unmatched row was emitted (or it never will be)


@dataclass
class RefStreamStreamJoin:
    """Windowed join over every on-time record ever seen (nothing is evicted)."""

    how: str
    before: int
    after: int
    grace: int
    ooo: int
    w: int | None = None
    held: list[_Held] = field(default_factory=list)

    def _pair(self, left: Rec, right: Rec) -> bool:
        assert left.ts is not None and right.ts is not None
        return left.key == right.key and left.ts - self.before <= right.ts <= left.ts + self.after

    def _emits(self, side: str) -> bool:
        return self.how == "outer" or (self.how == "left" and side == "left")

    def _flush(self, out: list[Out]) -> None:
        assert self.w is not None
        for h in self.held:
            assert h.rec.ts is not None
            final = h.rec.ts + self.before + self.after + 1 + self.grace <= self.w
            if final and not h.done:
                h.done = True
                if not h.matched and self._emits(h.side):
                    r = h.rec
                    lrow, rrow = (r.row, None) if h.side == "left" else (None, r.row)
                    out.append((r.key, r.ts, r.offset, lrow, rrow))

    def process(self, side: str, recs: Sequence[Rec]) -> tuple[list[Out], list[int]]:
        """One call: (results, offsets of the late records)."""
        out: list[Out] = []
        late: list[int] = []
        for r in recs:
            if r.key is None or r.ts is None:
                continue
            t = r.ts - self.ooo
            self.w = t if self.w is None else max(self.w, t)
            reach = self.after if side == "left" else self.before
            if r.ts + reach + 1 + self.grace <= self.w:
                late.append(r.offset)
                continue
            me = _Held(side, r)
            for h in self.held:
                if h.side == side:
                    continue
                lrec, rrec = (r, h.rec) if side == "left" else (h.rec, r)
                if self._pair(lrec, rrec):
                    assert not h.done, "a record matched after its unmatched row was final"
                    h.matched = me.matched = True
                    ts = max(lrec.ts or 0, rrec.ts or 0)
                    out.append((r.key, ts, r.offset, lrec.row, rrec.row))
            self.held.append(me)
            self._flush(out)
        return out, late

    def on_watermark(self, wm: int) -> list[Out]:
        out: list[Out] = []
        if self.w is not None and wm <= self.w:
            return out
        self.w = wm
        self._flush(out)
        return out


def norm(row: Row | None, names: Sequence[str]) -> Row | None:
    """``row`` restricted to ``names``; None when absent or when every such value is null."""
    if row is None:
        return None
    out = {n: row.get(n) for n in names}
    return None if all(v is None for v in out.values()) else out


def outs(
    batch: Any,
    left_names: Sequence[str],
    right_columns: dict[str, str],
    changelog: bool = False,
) -> list[Out]:
    """An operator's result batch as reference tuples.

    ``right_columns`` maps each right field to its name in the result (after clash renaming).
    """
    if batch is None:
        return []
    result: list[Out] = []
    for row, key, ts, offset in zip(
        batch.data.to_pylist(),
        batch.keys.to_pylist(),
        batch.timestamps.to_pylist(),
        batch.offsets.to_pylist(),
        strict=True,
    ):
        left = norm(row, left_names)
        right = norm({f: row.get(out) for f, out in right_columns.items()}, list(right_columns))
        tail = (row["__tombstone"],) if changelog else ()
        result.append((key, ts, offset, left, right, *tail))
    return result


def norm_outs(
    rows: Sequence[Out], left_names: Sequence[str], right_names: Sequence[str]
) -> list[Out]:
    """Reference tuples with their rows normalised as :func:`outs` does."""
    return [
        (k, t, o, norm(lrow, left_names), norm(rrow, right_names), *rest)
        for k, t, o, lrow, rrow, *rest in rows
    ]
