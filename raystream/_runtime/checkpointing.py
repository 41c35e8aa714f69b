"""A task's state to checkpoint epochs and back.

Each epoch writes, for one task:

- ``__meta``: one row per stateful operator (and one for the task itself) holding everything
  that is not in a keyed store: watermarks, learned schemas, counters (small, written whole);
- ``<operator>.<i>``: the rows of the operator's i-th keyed store that changed in the epoch
  (every row in a full epoch), ``__key`` and ``__value`` pickled, ``__deleted`` for removals.

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
_TASK_META = "__task"
_MISSING = object()
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


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
        meta_keys: list[bytes] = [_dump(_TASK_META)]
        meta_values: list[bytes | None] = [_dump({"max_event_time": self.task.max_event_time})]
        tables: dict[str, pa.Table] = {}
        for name, op in self._ops:
            snap = op.snapshot(with_stores=False)
            if snap is None:
                continue
            meta_keys.append(_dump(name))
            meta_values.append(_dump(snap))
            if isinstance(op, ViewOperator):
                tables[view_store(op.view)] = op.view_rows(full)
                continue
            for i, kv in enumerate(op.state_stores()):
                tables[store_name(name, i)] = _rows(kv, full)
        tables[META] = _table(meta_keys, [False] * len(meta_keys), meta_values)
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
        manifest = self.store.manifest(task, ref)
        meta = _decode(self.store.load(task, ref, META))
        task_meta = meta.pop(_TASK_META, {})
        self.task.max_event_time = task_meta.get("max_event_time")
        available = set(self.store.stores_of(task, ref))
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
            items = []
            for i, _ in enumerate(op.state_stores()):
                sname = store_name(name, i)
                table = self.store.load(task, ref, sname) if sname in available else None
                items.append(list(_decode(table).items()) if table is not None else [])
            op.restore(meta.pop(name), stores=items)
        self.head = manifest
        self._since_full = 0
        return manifest


def _rows(kv: KeyedStore, full: bool) -> pa.Table:
    keys: list[bytes] = []
    deleted: list[bool] = []
    values: list[bytes | None] = []
    if full:
        for k, v in kv.items():
            keys.append(_dump(k))
            deleted.append(False)
            values.append(_dump(v))
    else:
        for k in kv.dirty_keys():
            v = kv.get(k, _MISSING)
            keys.append(_dump(k))
            deleted.append(v is _MISSING)
            values.append(None if v is _MISSING else _dump(v))
    return _table(keys, deleted, values)


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
