"""A task's state to checkpoint epochs and back.

Each epoch writes, for one task, one ``__state`` file and one file per view that changed:

- ``__state``: each store as a few rows ``<store>|*<i>`` whose value is a pickled list of up
  to 200,000 ``(key, value)`` items (one pickle call per chunk is several times faster to write
  and to load than one per key): every item in a full epoch, the items that changed in a delta,
  whose keys removed from the store are one more row ``<store>|-`` (``__deleted``). Epochs
  written before deltas were chunked have one row a changed key (``<store>|<pickled key>``),
  which still restore. Beside them, one
  ``__meta|<operator>`` row per stateful operator (and ``__meta|__task``) holding what is not
  in a keyed store: watermarks, learned schemas, counters (small, written whole every epoch).
- ``view.<name>``: the view's typed rows that changed (SQL reads these directly); a delta epoch
  in which a view did not change writes no file for it.

One file for all pickled state, rather than one per store, keeps an epoch's cost to a few file
operations however many operators the task has: epochs are short (tens of milliseconds) when
the app wants low latency, and file creation, not the bytes, is most of their cost.

Recovery loads the epoch Kafka committed and hands each operator its snapshot and store items.
A full epoch is written every ``compact_every`` epochs, which bounds how many deltas a recovery
or a view reads.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Hashable
from typing import Any

import pyarrow as pa

from raystream._runtime.task import TaskRunner
from raystream.errors import CheckpointError
from raystream.operators.view import ViewOperator
from raystream.state.base import KeyedStore
from raystream.state.checkpoint import (
    DELETED,
    KEY,
    CheckpointStore,
    EpochManifest,
    EpochRef,
)

VALUE = "__value"
META = "__meta"
#: The store holding every pickled keyed store and the operators' metadata.
STATE = "__state"
_TASK_META = "__task"
_SEP = b"|"
#: Marks a chunk of a whole store (a pickled key starts with b"\x80", never with this).
_CHUNK = b"*"
#: Marks the keys a delta epoch removed from a store.
_GONE = b"-"
_CHUNK_ITEMS = 200_000
_MISSING = object()
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _dump_chunk(items: list[tuple[Hashable, Any]]) -> bytes:
    """``(keys, values)`` of a store chunk in one pickle: one call for the chunk instead of two
    per key, and far fewer objects to load on recovery. (The memo stays on: the "fast" mode
    without it failed on real job state in CPython's C pickler, and would duplicate objects a
    value shares.)"""
    return _dump(([k for k, _ in items], [v for _, v in items]))


def view_store(view: str) -> str:
    """The checkpoint store name of view ``view`` (typed rows SQL reads directly)."""
    return f"view.{view}"


def store_name(operator: str, index: int) -> str:
    """The checkpoint file name of an operator's ``index``-th keyed store."""
    return f"{_SAFE.sub('_', operator)}.{index}"


class TaskCheckpointer:
    """Writes one task's epochs to a :class:`CheckpointStore` and restores the task from one."""

    def __init__(self, store: CheckpointStore, task: TaskRunner, compact_every: int) -> None:
        self.store = store
        self.task = task
        self.compact_every = max(compact_every, 1)
        self.head: EpochManifest | None = None
        self._since_full = 0
        self._ops = [(task.names[n], op) for n, op in task.operators.items()]

    @property
    def stateful(self) -> bool:
        """Whether any operator of the task keeps state."""
        return any(op.snapshot(with_stores=False) is not None for _, op in self._ops)

    def dirty(self) -> bool:
        """Whether any keyed store (or view) changed since the last epoch written."""
        return any(
            s.dirty_keys()
            for _, op in self._ops
            for s in ((op.rows,) if isinstance(op, ViewOperator) else op.state_stores())
        )

    def write(self, ref: EpochRef, offsets: dict[str, int]) -> EpochManifest:
        """Write epoch ``ref`` (changes since the last one, or everything when it is time to
        compact) and publish it."""
        full = self.head is None or self._since_full + 1 >= self.compact_every
        rows = _Rows()
        rows.add(_meta_key(_TASK_META), _dump({"max_event_time": self.task.max_event_time}))
        tables: dict[str, pa.Table] = {}
        for name, op in self._ops:
            snap = op.snapshot(with_stores=False)
            if snap is None:
                continue
            rows.add(_meta_key(name), _dump(snap))
            if isinstance(op, ViewOperator):
                table = op.view_rows(full)
                if full or table.num_rows:
                    tables[view_store(op.view)] = table
                continue
            for i, kv in enumerate(op.state_stores()):
                rows.add_store(store_name(name, i).encode() + _SEP, kv, full)
        tables[STATE] = rows.table()
        manifest = self.store.write_epoch(
            str(self.task.task), ref, offsets, tables, parent=self.head, full=full
        )
        for _, op in self._ops:
            for kv in op.state_stores():
                kv.mark_clean()
        self.head = manifest
        self._since_full = 0 if full else self._since_full + 1
        return manifest

    def restore(self, ref: EpochRef) -> EpochManifest:
        """Load epoch ``ref`` into the task's operators; returns its manifest."""
        task = str(self.task.task)
        chain = self.store.chain(task, ref)  # the full base, then each delta up to ref
        manifest = chain[-1]
        available = {name for m in chain for name in m.stores}
        meta: dict[Any, Any]
        if STATE in available:
            meta = {}
            stores: dict[str, dict[Hashable, Any]] = {}
            for m in chain:
                if STATE in m.stores:
                    _apply(self.store.read_epoch(task, m.ref, STATE), meta, stores)
        else:  # written before the stores shared one file: one file per store, and __meta
            meta = _decode(self.store.load(task, ref, META))
            stores = {
                s: _decode(self.store.load(task, ref, s))
                for s in available
                if s != META and not s.startswith(view_store(""))
            }
        task_meta = meta.pop(_TASK_META, {})
        self.task.max_event_time = task_meta.get("max_event_time")
        for name, op in self._ops:
            if name not in meta:
                if op.snapshot(with_stores=False) is not None:
                    raise CheckpointError(
                        f"task {task}: epoch {ref[0]} has no state for operator {name!r}; was "
                        "the topology changed? Operators are matched by name: keep names stable "
                        "(name=...) or start the app under a new name"
                    )
                continue
            if isinstance(op, ViewOperator):
                vname = view_store(op.view)
                table = self.store.load(task, ref, vname) if vname in available else None
                op.restore_view(table, meta.pop(name))
                continue
            items = [
                list(stores.get(store_name(name, i), {}).items())
                for i, _ in enumerate(op.state_stores())
            ]
            op.restore(meta.pop(name), stores=items)
        self.head = manifest
        self._since_full = 0
        return manifest


def _meta_key(name: str) -> bytes:
    return META.encode() + _SEP + name.encode()


class _Rows:
    """The ``__state`` table of one epoch, built up column by column."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.deleted: list[bool] = []
        self.values: list[bytes | None] = []

    def add(self, key: bytes, value: bytes) -> None:
        self.keys.append(key)
        self.deleted.append(False)
        self.values.append(value)

    def add_store(self, prefix: bytes, kv: KeyedStore, full: bool) -> None:
        keys, deleted, values = self.keys, self.deleted, self.values
        if full:
            self._chunks(prefix, list(kv.items()))
            return
        # A delta: the changed items in chunks, the removed keys in one more row (a key is one
        # or the other). A few pickle calls a store instead of two a key: epochs are short
        # when the app wants low latency, and per-key pickling was much of their CPU.
        changed: list[tuple[Hashable, Any]] = []
        removed: list[Hashable] = []
        for k in kv.dirty_keys():
            v = kv.get(k, _MISSING)
            if v is _MISSING:
                removed.append(k)
            else:
                changed.append((k, v))
        self._chunks(prefix, changed)
        if removed:
            keys.append(prefix + _GONE)
            deleted.append(True)
            values.append(_dump(removed))

    def _chunks(self, prefix: bytes, items: list[tuple[Hashable, Any]]) -> None:
        for i, start in enumerate(range(0, len(items), _CHUNK_ITEMS)):
            chunk = items[start : start + _CHUNK_ITEMS]
            self.add(prefix + _CHUNK + str(i).encode(), _dump_chunk(chunk))

    def table(self) -> pa.Table:
        return _table(self.keys, self.deleted, self.values)


def _apply(table: pa.Table, meta: dict[Any, Any], stores: dict[str, dict[Hashable, Any]]) -> None:
    """Apply one epoch's ``__state`` rows on top of the state so far: operator metadata by
    name into ``meta``, keyed items by store name into ``stores``."""
    meta_prefix = META.encode()
    loads = pickle.loads
    by_prefix: dict[bytes, dict[Hashable, Any]] = {}
    keys = table.column(KEY).to_pylist()
    gone = table.column(DELETED).to_pylist()
    values = table.column(VALUE).to_pylist()
    for key, deleted, value in zip(keys, gone, values, strict=True):
        store, _, rest = key.partition(_SEP)
        if store == meta_prefix:
            meta[rest.decode()] = loads(value)
            continue
        items = by_prefix.get(store)
        if items is None:
            items = by_prefix[store] = stores.setdefault(store.decode(), {})
        if rest[:1] == _CHUNK:
            chunk_keys, chunk_values = loads(value)
            items.update(zip(chunk_keys, chunk_values, strict=True))
        elif rest == _GONE:
            for k in loads(value):
                items.pop(k, None)
        elif deleted:  # one row a key: epochs written before deltas were chunked
            items.pop(loads(rest), None)
        else:
            items[loads(rest)] = loads(value)


def _table(keys: list[bytes], deleted: list[bool], values: list[bytes | None]) -> pa.Table:
    return pa.table(
        {
            KEY: pa.array(keys, pa.binary()),
            DELETED: pa.array(deleted, pa.bool_()),
            VALUE: pa.array(values, pa.binary()),
        }
    )


def _decode(table: pa.Table) -> dict[Hashable, Any]:
    keys = table.column(KEY).to_pylist()
    values = table.column(VALUE).to_pylist()
    return {pickle.loads(k): pickle.loads(v) for k, v in zip(keys, values, strict=True)}
