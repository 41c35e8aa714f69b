"""The table-table join: a table (keyed changelog) that updates when either side changes.

Both inputs are changelogs of co-partitioned tables (conventions in
:mod:`raystream.operators.joins_base`); each side is kept as a
:class:`~raystream.operators.joins_table.TableState` (latest value per key, in a keyed store).

The joined row of a key exists when, with ``L`` / ``R`` the sides' current values:

* ``inner``: both ``L`` and ``R`` exist; ``left``: ``L`` exists; ``outer``: either exists.

Each change of a side (an upsert, or a tombstone that deleted a key) recomputes its key's joined
row; the output is the result table's changelog, in input order, one record per change:

* the joined row exists after the change: an upsert with the left columns (nulls without ``L``)
  and the right columns (nulls without ``R``), ``__tombstone`` false; emitted even if the change
  did not alter the joined values (as Kafka Streams without a record cache);
* it existed before and not after: a tombstone (value columns null, ``__tombstone`` true);
* it exists neither before nor after (e.g. an inner join whose other side is absent): nothing.

Output records keep the changing record's key and offset; their timestamp is the max of the
changing record's and the other side's current value's event times (as Kafka Streams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.operators.base import Batch, Row
from raystream.operators.joins_base import (
    DEFAULT_RIGHT_PREFIX,
    LEFT,
    RIGHT,
    BinaryOperator,
    BinaryOperatorSpec,
    JoinSnapshot,
    SideSchema,
    StoreItems,
    check_how,
    check_prefix,
    check_schema,
    expect_snapshot,
    joined_data,
    store_items,
    with_tombstones,
)
from raystream.operators.joins_table import Entry, TableState
from raystream.state.base import KeyedStore

TABLE_TABLE_HOWS = ("inner", "left", "outer")


@dataclass(frozen=True)
class TableTableJoinSpec(BinaryOperatorSpec):
    """Spec of ``table.join(other_table, how=...)``: the joined table's changelog on port 0."""

    how: str = "inner"
    right_prefix: str = DEFAULT_RIGHT_PREFIX
    left_schema: pa.Schema | None = None
    right_schema: pa.Schema | None = None
    kind = "table_table_join"

    def __post_init__(self) -> None:
        check_how(self.how, TABLE_TABLE_HOWS, "table-table")
        check_prefix(self.right_prefix)
        check_schema(self.left_schema, "left_schema")
        check_schema(self.right_schema, "right_schema")

    def build(self, name: str) -> TableTableJoinOperator:
        return TableTableJoinOperator(name, self)


class TableTableJoinOperator(BinaryOperator):
    """Joins two co-partitioned tables; emits the joined table's changes."""

    ports = 1

    def __init__(self, name: str, spec: TableTableJoinSpec) -> None:
        self.name = name
        self.how = spec.how
        self.right_prefix = spec.right_prefix
        self.left = TableState(SideSchema(spec.left_schema, LEFT, name), name)
        self.right = TableState(SideSchema(spec.right_schema, RIGHT, name), name)

    def process_left(self, batch: Batch) -> Sequence[Batch | None]:
        return [self._changes(batch, left_changed=True)]

    def process_right(self, batch: Batch) -> Sequence[Batch | None]:
        return [self._changes(batch, left_changed=False)]

    def _exists(self, left: Entry | None, right: Entry | None) -> bool:
        if self.how == "inner":
            return left is not None and right is not None
        if self.how == "left":
            return left is not None
        return left is not None or right is not None

    def _changes(self, batch: Batch, left_changed: bool) -> Batch | None:
        mine, other = (self.left, self.right) if left_changed else (self.right, self.left)
        index: list[int] = []
        lefts: list[Row | None] = []
        rights: list[Row | None] = []
        dead: list[bool] = []
        times: list[int | None] = []
        for c in mine.apply(batch):
            o = other.store.get(c.key)
            old_l, old_r = (c.old, o) if left_changed else (o, c.old)
            new_l, new_r = (c.new, o) if left_changed else (o, c.new)
            if self._exists(new_l, new_r):
                lefts.append(None if new_l is None else new_l[0])
                rights.append(None if new_r is None else new_r[0])
                dead.append(False)
            elif self._exists(old_l, old_r):
                lefts.append(None)
                rights.append(None)
                dead.append(True)
            else:
                continue
            index.append(c.index)
            known = [t for t in (c.ts, None if o is None else o[1]) if t is not None]
            times.append(max(known) if known else None)
        if not index:
            return None
        sub = batch.take(index)
        data = joined_data(
            self.left.schema.rows_batch(lefts),
            self.right.schema.rows_batch(rights),
            self.right_prefix,
            self.name,
        )
        return Batch(
            with_tombstones(data, np.array(dead, bool)),
            sub.keys,
            pa.array(times, pa.int64()),
            sub.offsets,
        )

    def sizes(self) -> tuple[int, int]:
        """Number of keys held for the left and the right table."""
        return len(self.left.store), len(self.right.store)

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.left.store, self.right.store)

    def snapshot(self, with_stores: bool = True) -> JoinSnapshot:
        ls, lschemas, litems = self.left.snapshot_parts(with_stores)
        rs, rschemas, ritems = self.right.snapshot_parts(with_stores)
        items = (litems, ritems) if with_stores else ()
        return JoinSnapshot(type(self).__name__, (ls, rs), (*lschemas, *rschemas), items)

    def restore(self, state: Any, stores: StoreItems | None = None) -> None:
        snap = expect_snapshot(state, self, self.name)
        self.left.restore_parts(snap.scalars[0], snap.schemas[:2], store_items(snap, stores, 0))
        self.right.restore_parts(snap.scalars[1], snap.schemas[2:], store_items(snap, stores, 1))
