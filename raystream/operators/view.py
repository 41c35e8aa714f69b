"""Materialized views: the latest row per primary key of a stream or a table's changelog.

``stream.materialize("name")`` (or ``table.materialize``) adds a :class:`ViewOperator`. Its
primary key is the record key, plus ``window_start`` when the rows carry it (window aggregates:
one row per key and window). A changelog's tombstone (``__tombstone``) deletes its key. Optional
``retention`` drops windowed rows whose ``window_end`` is older than the watermark minus it.

Views are checkpointed as *typed rows* (not pickled values), one store per view, so that the
checkpoint's Parquet files are directly what SQL reads: columns ``__key`` (the primary key,
serialized), ``__deleted`` and the view's own columns. The operator passes its input through on
port 0, so a view can sit in the middle of a flow.

Point lookups (:meth:`ViewOperator.get`) come from another thread than processing: a lock makes
each lookup see the rows after a whole batch, never part of one.
"""

from __future__ import annotations

import pickle
import re
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.errors import ConfigError, OperatorContractError
from raystream.operators.base import Batch, Operator, OperatorSpec, Row, TaskContext
from raystream.operators.joins_base import SideSchema, tombstone_mask, value_columns
from raystream.operators.keyed import check_scalar_keys
from raystream.state.checkpoint import DELETED, KEY
from raystream.state.memory import MemoryStore

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
WINDOW_START = "window_start"
WINDOW_END = "window_end"


def check_view_name(name: object) -> str:
    """``name`` if it can name a SQL table, else a ConfigError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("raystream_"):
        raise ConfigError(
            f"view name {name!r}: use a SQL identifier (letters, digits, '_', not starting with "
            "a digit, at most 63 characters, not starting with 'raystream_')"
        )
    return name


@dataclass(frozen=True)
class ViewSpec(OperatorSpec):
    """Spec of ``.materialize(name)``: keep the latest row per primary key as view ``name``."""

    view: str
    #: Column added with the record key when the rows do not carry it (None: not added).
    key_column: str | None = None
    #: Drop windowed rows once ``window_end < watermark - retention_ms`` (None: keep all).
    retention_ms: int | None = None
    #: The input is a global table, which every task holds whole: only the task of partition 0
    #: keeps the view's rows, so the view holds each row once.
    replicated: bool = False
    kind = "view"

    def __post_init__(self) -> None:
        check_view_name(self.view)
        if self.retention_ms is not None and self.retention_ms < 0:
            raise ConfigError("materialize: retention must be a non-negative duration")

    def build(self, name: str) -> ViewOperator:
        return ViewOperator(name, self)


class ViewOperator(Operator):
    """Holds a view's rows for one task; passes its input through."""

    ports = 1

    def __init__(self, name: str, spec: ViewSpec) -> None:
        self.name = name
        self.view = spec.view
        self.key_column = spec.key_column
        self.retention_ms = spec.retention_ms
        self.schema = SideSchema(None, "view", name)
        #: primary key -> row dict (stored rows are never mutated)
        self.rows = MemoryStore()
        #: key -> window starts of its rows (windowed views), so a lookup need not scan
        self._windows: dict[Hashable, set[Any]] = {}
        self.watermark: int | None = None
        self._swept: int | None = None
        self._lock = threading.Lock()
        self._replicated = spec.replicated
        self._keeps_rows = True

    def open(self, ctx: TaskContext) -> None:
        self._keeps_rows = not self._replicated or ctx.partition == 0

    # -- processing --------------------------------------------------------------------------
    def process(self, batch: Batch) -> Sequence[Batch | None]:
        if batch.num_rows == 0 or not self._keeps_rows:
            return [batch]
        check_scalar_keys(batch.keys, self.name)
        dead = tombstone_mask(batch.data, self.name)
        data = value_columns(batch.data)
        if self.key_column is not None and self.key_column not in data.schema.names:
            data = data.append_column(self.key_column, batch.keys)
        self.schema.observe(data.schema)
        rows = self.schema.conform(data).to_pylist()
        keys = batch.keys.to_pylist()
        starts = rows_column(rows, WINDOW_START)
        top = int(np.max(batch.timestamps.to_numpy(zero_copy_only=False)))
        with self._lock:
            for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
                if key is None:
                    continue
                if starts is None:
                    pk: Hashable = key
                else:
                    pk = (key, starts[i])
                    self._windows.setdefault(key, set()).add(starts[i])
                if dead[i]:
                    self._delete(pk)
                else:
                    self.rows.put(pk, row)
            self._advance(top)
        return [batch]

    def on_watermark(self, watermark: int) -> Sequence[Batch | None]:
        with self._lock:
            self._advance(watermark)
        return ()

    def _delete(self, pk: Hashable) -> None:
        self.rows.delete(pk)
        if isinstance(pk, tuple):
            starts = self._windows.get(pk[0])
            if starts is not None:
                starts.discard(pk[1])
                if not starts:
                    del self._windows[pk[0]]

    def _advance(self, watermark: int) -> None:
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        if self.retention_ms is None or self.watermark is None:
            return
        step = max(self.retention_ms // 10, 1_000)
        if self._swept is not None and self.watermark - self._swept < step:
            return  # sweeping is O(rows): do it once per tenth of the retention
        self._swept = self.watermark
        horizon = self.watermark - self.retention_ms
        old = [
            pk
            for pk, row in self.rows.items()
            if isinstance(row.get(WINDOW_END), int) and row[WINDOW_END] < horizon
        ]
        for pk in old:
            self._delete(pk)

    # -- reading -----------------------------------------------------------------------------
    def get(self, key: Any) -> list[Row]:
        """The rows of ``key`` (one, or one per window, oldest window first) after the last
        batch processed: fresher than the last committed epoch, so they may include records of
        an epoch that is not committed yet (rolled back and redone after a failure). Safe to
        call from another thread than the one processing."""
        with self._lock:
            direct = self.rows.get(key)
            if direct is not None:
                return [dict(direct)]
            starts = sorted(self._windows.get(key, ()))
            found = (self.rows.get((key, start)) for start in starts)
            return [dict(row) for row in found if row is not None]

    def to_arrow(self) -> pa.Table:
        """The view's current rows."""
        return pa.Table.from_batches([self.schema.rows_batch([r for _, r in self.rows.items()])])

    # -- checkpoints (typed rows: see the module doc) -----------------------------------------
    def view_rows(self, full: bool) -> pa.Table:
        """The rows to checkpoint: every row (``full``) or those changed since the last call."""
        if full:
            pks: list[Hashable] = [pk for pk, _ in self.rows.items()]
        else:
            pks = list(self.rows.dirty_keys())
        rows = [self.rows.get(pk) for pk in pks]
        data = self.schema.rows_batch(rows)
        table = pa.Table.from_batches([data])
        table = table.add_column(0, DELETED, pa.array([r is None for r in rows], pa.bool_()))
        table = table.add_column(
            0, KEY, pa.array([pickle.dumps(pk, protocol=5) for pk in pks], pa.binary())
        )
        self.rows.mark_clean()
        return table

    def restore_view(self, table: pa.Table | None, state: Any) -> None:
        """Load the rows of a committed epoch (``table``: live rows, as the store loads them)."""
        watermark, schema = state
        self.watermark = watermark
        if schema is not None:
            self.schema.schema = pa.ipc.read_schema(pa.py_buffer(schema))
        items: list[tuple[Hashable, Row]] = []
        if table is not None and table.num_rows:
            keys = table.column(KEY).to_pylist()
            values = table.drop_columns([KEY, DELETED]).select(self.schema.schema.names)
            for pk, row in zip(keys, values.to_pylist(), strict=True):
                items.append((pickle.loads(pk), row))
        windows: dict[Hashable, set[Any]] = {}
        for pk, _ in items:
            if isinstance(pk, tuple):
                windows.setdefault(pk[0], set()).add(pk[1])
        with self._lock:
            self.rows.load(items)
            self._windows = windows

    def snapshot(self, with_stores: bool = True) -> Any:
        schema = self.schema.schema.serialize().to_pybytes() if self.schema.schema.names else None
        return (self.watermark, schema)

    def restore(self, state: Any, stores: Any = None) -> None:
        raise OperatorContractError(
            f"{self.name}: a view restores from its checkpointed rows (restore_view)"
        )


def rows_column(rows: list[Row], column: str) -> list[Any] | None:
    """Column ``column`` of ``rows`` (None when the rows do not have it)."""
    if not rows or column not in rows[0]:
        return None
    return [r[column] for r in rows]
