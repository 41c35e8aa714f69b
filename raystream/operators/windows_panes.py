"""Columnar state for tumbling and hopping windows: one *pane* per window start.

A pane holds every open window that starts at one time: the keys in arrival order, a dict from
key to slot, and one NumPy array per accumulator component (a count, a sum, a min...) with a
"seen" mask for the components that start as null. A micro-batch adds to a pane with a few
vectorised operations, and a closing pane becomes result columns without a Python object per
window; the row-per-window store cost several microseconds a record where every record opens a
window of its own (a key with one record per window, the usual case for short windows).

Only the aggregations whose accumulators are plain numbers take this path (:data:`COLUMNAR`:
count, sum, min, max, mean). A component falls back to a NumPy object array, merged value by
value with the aggregation's own Python semantics, when its values are not int64 or float64
(strings, decimals, timestamps, unsigned 64-bit...) or when an int64 sum overflows.

:class:`PaneStore` is the :class:`~raystream.state.base.KeyedStore` of the panes (key: window
start), so checkpoints write the panes a batch touched (deltas) or all of them, and load old
checkpoints of one row per ``(key, window start)`` too.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.errors import OperatorContractError
from raystream.operators.aggregations import Aggregation, Count, Max, Mean, Min, Sum
from raystream.operators.aggregations_batch import ArrowSpec, GroupedBatch
from raystream.state.base import KeyedStore

#: The aggregations panes hold as columns.
COLUMNAR: tuple[type[Aggregation], ...] = (Count, Sum, Min, Max, Mean)

_NUMERIC = (np.dtype(np.int64), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)
_FLOAT64 = np.dtype(np.float64)
_OBJECT = np.dtype(object)


def columnar(aggs: Sequence[Aggregation]) -> bool:
    """Whether every aggregation of ``aggs`` can be held in panes."""
    return bool(aggs) and all(type(a) in COLUMNAR for a in aggs)


@dataclass(frozen=True)
class Component:
    """One accumulator component: the Arrow hash aggregate that feeds it and how it merges."""

    spec: ArrowSpec
    op: str  # "add", "min" or "max"
    nullable: bool  # starts as null (sum, min, max) rather than 0 (counts)


def components(aggs: Sequence[Aggregation]) -> list[Component]:
    """The components of ``aggs``, in order (a mean has two: its sum and its count)."""
    out: list[Component] = []
    for agg in aggs:
        for spec in agg.arrow_specs():
            fn = spec[1]
            if fn in ("count_all", "count"):
                out.append(Component(spec, "add", False))
            elif fn in ("sum", "min", "max"):
                out.append(Component(spec, "add" if fn == "sum" else fn, True))
            else:  # pragma: no cover - COLUMNAR only has the kinds above
                raise AssertionError(fn)
    return out


def _merge_scalar(op: str, a: Any, b: Any) -> Any:
    """The aggregations' own Python merge of two component values (None: no value yet)."""
    if a is None:
        return b
    if b is None:
        return a
    if op == "add":
        return a + b
    return builtins.min(a, b) if op == "min" else builtins.max(a, b)


def _object_array(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), object)
    arr[:] = values
    return arr


def partial_arrays(
    grouped: GroupedBatch, comps: Sequence[Component]
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per component, the batch's per-group partials: values and a valid mask (None: all)."""
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for comp in comps:
        arr = grouped.array(comp.spec[0], comp.spec[1])
        t = arr.type
        if (pa.types.is_integer(t) and t != pa.uint64()) or pa.types.is_floating(t):
            dtype = _INT64 if pa.types.is_integer(t) else _FLOAT64
            valid = None
            if arr.null_count:
                valid = arr.is_valid().to_numpy(zero_copy_only=False)
                arr = arr.fill_null(0)
            out.append((arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False), valid))
        else:
            values = arr.to_pylist()
            valid = np.fromiter((v is not None for v in values), bool, len(values))
            out.append((_object_array(values), None if valid.all() else valid))
    return out


class Pane:
    """The open windows that start at ``start``: keys, their slots, accumulator columns."""

    __slots__ = ("index", "keys", "rows_out", "seen", "start", "touched", "vals", "written")

    def __init__(self, start: int, n_components: int, nullable: Sequence[bool]) -> None:
        self.start = start
        self.keys: list[Any] = []
        self.index: dict[Any, int] = {}
        self.vals: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(n_components)]
        self.seen: list[np.ndarray | None] = [
            np.zeros(0, bool) if nul else None for nul in nullable
        ]
        self._reset_bookkeeping(written=False)

    def _reset_bookkeeping(self, written: bool) -> None:
        #: Slot arrays changed since the last checkpoint.
        self.touched: list[np.ndarray] = []
        #: Whether the checkpoints hold the pane whole (else only rows of it, or nothing).
        self.written = written
        #: Keys the checkpoints hold as rows written after the pane was last written whole.
        self.rows_out: set[Any] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def slots(self, keys: list[Any]) -> np.ndarray:
        """The slot of each key, new keys added at the end (``keys`` are distinct)."""
        index = self.index
        got = [index.get(k, -1) for k in keys]
        n = len(self.keys)
        if -1 in got:
            own = self.keys
            for i, k in enumerate(keys):
                if got[i] == -1:
                    index[k] = got[i] = n
                    own.append(k)
                    n += 1
            self._grow(n)
        return np.array(got, np.int64)

    def _grow(self, n: int) -> None:
        cap = len(self.vals[0]) if self.vals else 0
        if n <= cap:
            return
        new = builtins.max(n, 2 * cap, 16)
        for j, v in enumerate(self.vals):
            grown = np.zeros(new, v.dtype) if v.dtype != _OBJECT else np.full(new, None, object)
            grown[:cap] = v
            if v.dtype == _OBJECT and self.seen[j] is None:
                grown[cap:] = 0  # counts start at 0
            self.vals[j] = grown
            s = self.seen[j]
            if s is not None:
                grown_s = np.zeros(new, bool)
                grown_s[:cap] = s
                self.seen[j] = grown_s

    def merge(
        self,
        j: int,
        op: str,
        slots: np.ndarray,
        part: np.ndarray,
        valid: np.ndarray | None,
    ) -> None:
        """Merge the partials ``part`` (valid where ``valid``) into component ``j`` at ``slots``."""
        seen = self.seen[j]
        if j == 0:
            self.touched.append(slots)
        if valid is not None:
            slots, part = slots[valid], part[valid]
        vals = self.vals[j]
        if vals.dtype != part.dtype:
            vals = self._promote(j, part.dtype)
            if part.dtype != vals.dtype:
                part = part.astype(vals.dtype)
        if vals.dtype == _OBJECT:
            cur = vals[slots].tolist()
            new = part.tolist()
            if seen is None:
                merged = [_merge_scalar(op, a, b) for a, b in zip(cur, new, strict=True)]
            else:
                had = seen[slots].tolist()
                merged = [
                    _merge_scalar(op, a, b) if h else b
                    for a, b, h in zip(cur, new, had, strict=True)
                ]
            vals[slots] = _object_array(merged)
        else:
            cur = vals[slots]
            if op == "add":
                res = cur + part
                if vals.dtype == _INT64 and (((cur ^ res) & (part ^ res)) < 0).any():
                    # int64 overflow: Python ints from here on, as the row path had.
                    self._promote(j, _OBJECT)
                    self.merge(j, op, slots, part.astype(object), None)
                    return
            elif op == "min":
                res = np.where(part < cur, part, cur)  # builtins.min(a, b): b only if b < a
            else:
                res = np.where(part > cur, part, cur)
            if seen is not None:
                res = np.where(seen[slots], res, part)
            vals[slots] = res
        if seen is not None:
            seen[slots] = True

    def _promote(self, j: int, other: np.dtype[Any]) -> np.ndarray:
        vals = self.vals[j]
        # int64 and float64 make float64, as Python's int + float is a float.
        target = _OBJECT if _OBJECT in (vals.dtype, other) else _FLOAT64
        if vals.dtype != target:
            vals = vals.astype(target)
            s = self.seen[j]
            if target == _OBJECT and s is not None:
                vals[~s] = None
            self.vals[j] = vals
        return vals

    def column(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Component ``j`` over the pane's windows: values and seen mask (None: all set)."""
        n = len(self.keys)
        s = self.seen[j]
        return self.vals[j][:n], None if s is None else s[:n]

    def assign(self, keys: list[Any], flat: list[list[Any]], comps: Sequence[Component]) -> None:
        """Set the windows of ``keys`` to the component values ``flat`` (None: no value)."""
        slots = self.slots(keys)
        for j, (comp, values) in enumerate(zip(comps, flat, strict=True)):
            seen = self.seen[j]
            if seen is None:
                self.vals[j][slots] = 0
            else:
                seen[slots] = False
            part, valid = _component_values(values)
            self.merge(j, comp.op, slots, part, valid)

    def accumulators(self, slot: int, arity: Sequence[int]) -> tuple[Any, ...]:
        """The row store's accumulator tuple of the window at ``slot`` (a mean's is a pair)."""
        flat = []
        for j in range(len(self.vals)):
            s = self.seen[j]
            v = self.vals[j][slot]
            flat.append(
                None if s is not None and not s[slot] else v.item() if hasattr(v, "item") else v
            )
        out: list[Any] = []
        j = 0
        for a in arity:
            out.append(flat[j] if a == 1 else tuple(flat[j : j + a]))
            j += a
        return tuple(out)

    def rows(self) -> list[tuple[Any, ...]]:
        """Each window as ``(key, component values...)``, None where no value was seen."""
        cols: list[list[Any]] = []
        for j in range(len(self.vals)):
            values, seen = self.column(j)
            listed = values.tolist()
            if seen is not None:
                listed = [v if s else None for v, s in zip(listed, seen.tolist(), strict=True)]
            cols.append(listed)
        return list(zip(self.keys, *cols, strict=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pane):
            return NotImplemented
        return self.start == other.start and self.rows() == other.rows()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def copy(self) -> Pane:
        """An independent copy (for snapshots handed out while the pane keeps changing)."""
        new = Pane.__new__(Pane)
        new.__setstate__(self.__getstate__())
        return new

    def __getstate__(self) -> tuple[Any, ...]:
        n = len(self.keys)
        return (
            self.start,
            list(self.keys),
            [v[:n].copy() for v in self.vals],
            [None if s is None else s[:n].copy() for s in self.seen],
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.start, keys, self.vals, self.seen = state
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self._reset_bookkeeping(written=True)

    def nbytes(self) -> int:
        """Approximate memory of the pane (arrays, key list, index, a sample of the keys)."""
        arrays = sum(v.nbytes for v in self.vals) + sum(
            s.nbytes for s in self.seen if s is not None
        )
        per_key = sys.getsizeof(self.keys[0]) if self.keys else 0
        if self.vals and self.vals[0].dtype == _OBJECT:
            per_key += 32 * len(self.vals)
        return (
            arrays + sys.getsizeof(self.keys) + sys.getsizeof(self.index) + per_key * len(self.keys)
        )


def _flatten(
    rows: Iterable[tuple[Any, tuple[Any, ...]]], n: int
) -> tuple[list[Any], list[list[Any]]]:
    """Keys and per-component values of ``(key, accumulator tuple)`` rows."""
    keys: list[Any] = []
    flat: list[list[Any]] = [[] for _ in range(n)]
    for key, accs in rows:
        keys.append(key)
        j = 0
        for acc in accs:
            for v in acc if isinstance(acc, tuple) else (acc,):
                flat[j].append(v)
                j += 1
    return keys, flat


def _component_values(values: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    valid = np.fromiter((v is not None for v in values), bool, len(values))
    present = [v for v in values if v is not None]
    if all(type(v) is int for v in present) and _fits_int64(present):
        part = np.array([0 if v is None else v for v in values], np.int64)
    elif all(type(v) is float for v in present):
        part = np.array([0.0 if v is None else v for v in values], np.float64)
    else:
        part = _object_array(values)
    return part, None if valid.all() else valid


def pane_from_rows(
    start: int, rows: Iterable[tuple[Any, tuple[Any, ...]]], comps: Sequence[Component]
) -> Pane:
    """A pane from ``(key, accumulator tuple)`` rows: the state of one row per window, as
    checkpoints before panes stored it."""
    pane = Pane(start, len(comps), [c.nullable for c in comps])
    keys, flat = _flatten(rows, len(comps))
    pane.assign(keys, flat, comps)
    pane.touched = []
    return pane


def _fits_int64(values: list[int]) -> bool:
    return not values or (builtins.min(values) >= -(2**63) and builtins.max(values) < 2**63)


#: A pane whose changed windows since the last checkpoint are more than this share of it is
#: written whole; otherwise as rows, one per changed window. A row costs ~20x a window of a
#: whole pane to pickle, but every whole version in a delta chain is read back on restore.
_WHOLE_SHARE = 0.05


class PaneStore(KeyedStore):
    """The panes of one operator by window start, with checkpoint deltas at two grains.

    A delta writes a pane whole (key: its window start; value: the :class:`Pane`) when it is
    new or much of it changed, and otherwise only its changed windows, as the row store wrote
    them (key: ``(key, window start)``; value: the accumulator tuple). Rows written since a
    pane was last written whole are deleted when it is written whole again or closed, so the
    checkpoints never hold a row older than its pane. :meth:`load` puts the rows back on top
    of their panes.

    Values are live :class:`Pane` objects, changed in place by the operator: a checkpoint
    pickles them while it is written (synchronously, between two batches), which is the only
    reader of :meth:`get` and :meth:`items`.
    """

    def __init__(self, comps: Sequence[Component], arity: Sequence[int]) -> None:
        self._comps = list(comps)
        self._arity = list(arity)
        self._panes: dict[int, Pane] = {}
        self._dirty: set[int] = set()
        #: Rows in the checkpoints of panes closed since the last checkpoint (to delete).
        self._gone: set[tuple[Any, int]] = set()
        self._plan: tuple[frozenset[Hashable], list[Pane], list[tuple[Pane, list[Any]]]] | None
        self._plan = None

    def pane(self, start: int) -> tuple[Pane, bool]:
        """The pane of ``start`` (created when missing, then ``True``); marks it dirty."""
        self._dirty.add(start)
        self._plan = None
        pane = self._panes.get(start)
        if pane is not None:
            return pane, False
        pane = self._panes[start] = Pane(start, len(self._comps), [c.nullable for c in self._comps])
        return pane, True

    def pop(self, start: int) -> Pane | None:
        """Remove and return the pane of ``start`` (marked dirty: a checkpoint deletes it)."""
        pane = self._panes.pop(start, None)
        if pane is not None:
            self._dirty.add(start)
            self._gone.update((k, start) for k in pane.rows_out)
            self._plan = None
        return pane

    def starts(self) -> list[int]:
        """The window starts of the panes."""
        return list(self._panes)

    def windows(self) -> int:
        """Number of open windows over all panes."""
        return sum(len(p) for p in self._panes.values())

    def get(self, key: Hashable, default: Any = None) -> Any:
        if isinstance(key, tuple):
            pane = self._panes.get(key[1])
            slot = None if pane is None else pane.index.get(key[0])
            return default if slot is None else pane.accumulators(slot, self._arity)  # type: ignore[union-attr]
        return self._panes.get(key, default)  # type: ignore[call-overload]

    def put(self, key: Hashable, value: Any) -> None:
        if not isinstance(key, int) or not isinstance(value, Pane):
            raise OperatorContractError(
                f"a pane store holds Pane objects by window start, not {type(value).__name__}"
            )
        self._panes[key] = value
        value.written = False
        self._dirty.add(key)
        self._plan = None

    def delete(self, key: Hashable) -> None:
        self.pop(key)  # type: ignore[arg-type]

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        return iter(list(self._panes.items()))

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._panes))

    def __len__(self) -> int:
        return len(self._panes)

    def __contains__(self, key: object) -> bool:
        return key in self._panes

    def dirty_keys(self) -> frozenset[Hashable]:
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan[0]

    def _make_plan(self) -> tuple[frozenset[Hashable], list[Pane], list[tuple[Pane, list[Any]]]]:
        out: set[Hashable] = set(self._gone)
        whole: list[Pane] = []
        rows: list[tuple[Pane, list[Any]]] = []
        for start in self._dirty:
            pane = self._panes.get(start)
            if pane is None:
                out.add(start)
                continue
            changed: np.ndarray = (
                np.unique(np.concatenate(pane.touched)) if pane.touched else np.zeros(0, np.int64)
            )
            if not pane.written or len(changed) > _WHOLE_SHARE * len(pane):
                out.add(start)
                out.update((k, start) for k in pane.rows_out)  # superseded: deleted
                whole.append(pane)
            else:
                own = pane.keys
                keys = [own[i] for i in changed.tolist()]
                out.update((k, start) for k in keys)
                rows.append((pane, keys))
        return frozenset(out), whole, rows

    def mark_clean(self) -> None:
        # Called once the changes are in a checkpoint: what it now holds of each pane.
        _, whole, rows = self._plan if self._plan is not None else self._make_plan()
        for pane in whole:
            pane.written = True
            pane.rows_out.clear()
        for pane, keys in rows:
            pane.rows_out.update(keys)
        for pane in self._panes.values():
            pane.touched = []
        self._dirty.clear()
        self._gone.clear()
        self._plan = None

    def load(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        """Replace the panes by ``items``: ``(start, Pane)`` pairs and ``((key, start),
        accumulators)`` rows (a pane's later changes, or the whole state of checkpoints
        written before panes)."""
        panes: dict[int, Pane] = {}
        rows: dict[int, list[tuple[Any, tuple[Any, ...]]]] = {}
        for key, value in items:
            if isinstance(value, Pane):
                panes[int(key)] = value  # type: ignore[call-overload]
            elif isinstance(key, tuple) and len(key) == 2 and isinstance(value, tuple):
                rows.setdefault(int(key[1]), []).append((key[0], value))
            else:
                raise OperatorContractError(
                    f"cannot load window state item {key!r}: neither a pane nor a "
                    "(key, window start) row; was the checkpoint written by another operator?"
                )
        for pane in panes.values():
            pane._reset_bookkeeping(written=True)
        for start, pane_rows in rows.items():
            found = panes.get(start)
            if found is None:
                pane = panes[start] = pane_from_rows(start, pane_rows, self._comps)
            else:
                pane = found
                keys, flat = _flatten(pane_rows, len(self._comps))
                pane.assign(keys, flat, self._comps)
                pane.touched = []
            pane.rows_out.update(k for k, _ in pane_rows)
        self._panes = panes
        self._dirty.clear()
        self._gone.clear()
        self._plan = None

    def approx_bytes(self) -> int:
        return sys.getsizeof(self._panes) + sum(p.nbytes() for p in self._panes.values())
