"""Tables and the joins that look a stream record up in one: stream-table, stream-global-table.

Conventions (sides, keys, the ``__tombstone`` changelog column, result column names, schemas) are
in :mod:`raystream.operators.joins_base`. Here:

* **Table state** (:class:`TableState`): the latest value per key of a changelog, in a
  :class:`~raystream.state.base.KeyedStore` as ``key -> (row dict, event time)``. Records apply in
  processing order (a later record wins even with an older timestamp, as in Kafka Streams'
  unversioned tables); a tombstone deletes its key; records with a null key are dropped and counted.
* **Materialiser** (:class:`TableSpec`): one input, the changelog; port 0 is the table's own
  changelog: every upsert, and every tombstone that deleted a key (a tombstone for an absent key
  changes nothing and is not emitted). Output rows carry the table's value columns (null for
  tombstones) and ``__tombstone``.
* **Stream-table join** (:class:`StreamTableJoinSpec`): left = the stream, right = the table's
  changelog, co-partitioned. A stream record joins the table value of its key *as of its call*:
  every right batch delivered before it applies, nothing after (within a call, all stream records
  see the same state, since a call carries one side only). ``inner`` drops records without a
  match, ``left`` keeps them with null table columns. Stream records with a null key never match.
  The result keeps the stream record's key, timestamp and offset, in input order.
* **Stream-global-table join** (:class:`GlobalTableJoinSpec`): the same, with the lookup key taken
  from the stream record (``on``: a field name, or a function of the row) instead of its key; the
  table is complete in every task (the runtime feeds the whole topic to each). A null lookup key
  never matches; a function that raises reports the record as a failure (dead-letter topic) and the
  record is not joined.

Lookups are vectorised: the batch's keys are dictionary-encoded, each distinct key is looked up
once, and the rows are spread over the records with an Arrow ``take`` from the table's rows as
Arrow, which are built once per table entry (:mod:`~raystream.operators.joins_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import ConfigError, OperatorContractError
from raystream.operators.base import Batch, Operator, OperatorSpec, RecordFailure, Row, TaskContext
from raystream.operators.joins_base import (
    DEFAULT_RIGHT_PREFIX,
    RIGHT,
    BinaryOperator,
    BinaryOperatorSpec,
    JoinSnapshot,
    SideSchema,
    StoreItems,
    check_how,
    check_prefix,
    check_scalar_keys,
    check_schema,
    expect_snapshot,
    joined_data,
    key_array,
    record_batch,
    schema_bytes,
    schema_from_bytes,
    store_items,
    tombstone_mask,
    value_columns,
    with_tombstones,
)
from raystream.operators.joins_rows import RowCache
from raystream.state.base import KeyedStore
from raystream.state.memory import MemoryStore

LOOKUP_HOWS = ("inner", "left")

#: A table entry: the value row and the event time of the record that wrote it (None if unknown).
Entry = tuple[Row, int | None]


@dataclass(frozen=True)
class Change:
    """One changelog record that changed a table: its row in the batch, key, old and new entry."""

    index: int
    key: Any
    old: Entry | None
    new: Entry | None  # None: the key was deleted
    ts: int | None  # the record's event time


class TableState:
    """The latest value per key of a changelog, in a keyed store (see module doc)."""

    def __init__(self, schema: SideSchema, op_name: str) -> None:
        self.schema = schema
        self.op_name = op_name
        self.store = MemoryStore()
        self.key_type: pa.DataType | None = None
        self.dropped_null_keys = 0
        self._rows = RowCache()

    def apply(self, batch: Batch) -> list[Change]:
        """Apply a changelog batch in order; the changes it made (no-op tombstones left out)."""
        if batch.num_rows == 0:
            return []
        check_scalar_keys(batch.keys, self.op_name)
        if batch.keys.type != pa.null():
            self.key_type = batch.keys.type
        tomb = tombstone_mask(batch.data, self.op_name)
        values = value_columns(batch.data)
        self.schema.observe(values.schema)
        rows = self.schema.conform(values).to_pylist()
        store = self.store
        changes: list[Change] = []
        for i, (key, ts, dead) in enumerate(
            zip(batch.keys.to_pylist(), batch.timestamps.to_pylist(), tomb.tolist(), strict=True)
        ):
            if key is None:
                self.dropped_null_keys += 1
                continue
            old = store.get(key)
            if dead:
                if old is not None:
                    store.delete(key)
                    changes.append(Change(i, key, old, None, ts))
                continue
            new = (rows[i], ts)
            store.put(key, new)
            changes.append(Change(i, key, old, new, ts))
        return changes

    def lookup(self, keys: pa.Array) -> tuple[np.ndarray, pa.RecordBatch]:
        """For each key: whether the table has it, and its row (all nulls where it has not)."""
        n = len(keys)
        if n == 0 or keys.type == pa.null() or keys.null_count == n:
            return np.zeros(n, bool), self.schema.rows_batch([None] * n)
        enc = pc.dictionary_encode(keys)
        distinct = enc.dictionary.to_pylist()
        schema = self.schema.schema
        if schema.names:
            slots = self._rows.slots(
                distinct,
                self.store.get_many(distinct),
                lambda entries: self.schema.rows_batch([e[0] for e in entries]),
                schema,
                len(self.store),
            )
        else:  # no value columns: only whether each key is there
            slots = np.array([0 if k in self.store else -1 for k in distinct], np.int64)
        valid = np.asarray(enc.indices.is_valid().to_numpy(zero_copy_only=False), bool)
        codes = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        at = slots[codes]
        matched = (at >= 0) & valid
        if not schema.names:
            return matched, self.schema.rows_batch([None] * n)
        return matched, self._rows.take(pa.array(at, pa.int64(), mask=~matched))

    def to_arrow(self, key_name: str = "key") -> pa.Table:
        """The current table: a ``key_name`` column and the value columns, in insertion order."""
        items = list(self.store.items())
        data = self.schema.rows_batch([entry[0] for _, entry in items])
        keys = key_array([k for k, _ in items], self.key_type)
        return pa.Table.from_batches([data]).add_column(0, key_name, keys)

    def snapshot_parts(
        self, with_stores: bool = True
    ) -> tuple[tuple[Any, ...], tuple[bytes | None, ...], Any]:
        """(scalars, schemas, store items) for a :class:`JoinSnapshot`."""
        learned = None if self.schema.declared is not None else self.schema.schema
        key = None if self.key_type is None else pa.schema([pa.field("key", self.key_type)])
        return (
            (self.dropped_null_keys,),
            (schema_bytes(learned), schema_bytes(key)),
            tuple(self.store.items()) if with_stores else (),
        )

    def restore_parts(
        self, scalars: tuple[Any, ...], schemas: tuple[bytes | None, ...], items: Any
    ) -> None:
        """Load what :meth:`snapshot_parts` gave."""
        (self.dropped_null_keys,) = scalars
        learned, key = (schema_from_bytes(s) for s in schemas)
        if learned is not None:
            self.schema.schema = learned
        self.key_type = None if key is None else key.field(0).type
        self.store.load(items)


# -- materialiser ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec(OperatorSpec):
    """Spec of ``app.table(...)``: materialise a changelog into the latest value per key.

    ``value_schema`` declares the value columns (without ``__tombstone``); None learns them. Port
    0 is the table's changelog (see the module doc).
    """

    value_schema: pa.Schema | None = None
    kind = "table"

    def __post_init__(self) -> None:
        check_schema(self.value_schema, "value_schema")

    def build(self, name: str) -> TableOperator:
        return TableOperator(name, self)


class TableOperator(Operator):
    """The latest value per key of a changelog; emits the changes it makes."""

    def __init__(self, name: str, spec: TableSpec) -> None:
        self.name = name
        self.state = TableState(SideSchema(spec.value_schema, "table", name), name)

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        changes = self.state.apply(batch)
        if not changes:
            return [None]
        sub = batch.take([c.index for c in changes])
        dead = np.fromiter((c.new is None for c in changes), bool, len(changes))
        values = self.state.schema.conform(value_columns(sub.data))
        if dead.any():
            mask = pa.array(dead, pa.bool_())
            values = record_batch(
                [pc.if_else(mask, pa.scalar(None, c.type), c) for c in values.columns],
                values.schema.names,
                len(dead),
            )
        return [sub.with_data(with_tombstones(values, dead))]

    def get(self, key: Any) -> Row | None:
        """The current value row of ``key`` (None when absent)."""
        entry = self.state.store.get(key)
        return None if entry is None else dict(entry[0])

    def __len__(self) -> int:
        return len(self.state.store)

    def to_arrow(self, key_name: str = "key") -> pa.Table:
        """The current table (for views and tests)."""
        return self.state.to_arrow(key_name)

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.state.store,)

    def snapshot(self, with_stores: bool = True) -> JoinSnapshot:
        scalars, schemas, items = self.state.snapshot_parts(with_stores)
        return JoinSnapshot(type(self).__name__, scalars, schemas, (items,) if with_stores else ())

    def restore(self, state: Any, stores: StoreItems | None = None) -> None:
        snap = expect_snapshot(state, self, self.name)
        self.state.restore_parts(snap.scalars, snap.schemas, store_items(snap, stores, 0))


# -- stream-table and stream-global-table joins -------------------------------------------------


def _check_lookup_join(how: object, prefix: object, schema: object, join: str) -> None:
    check_how(how, LOOKUP_HOWS, join)
    check_prefix(prefix)
    check_schema(schema, "right_schema")


@dataclass(frozen=True)
class StreamTableJoinSpec(BinaryOperatorSpec):
    """Spec of ``stream.join(table, how=...)``: left = stream, right = the table's changelog.

    Port 0: the stream records with the table's columns added (see the module doc).
    """

    how: str = "inner"
    right_prefix: str = DEFAULT_RIGHT_PREFIX
    right_schema: pa.Schema | None = None
    kind = "stream_table_join"

    def __post_init__(self) -> None:
        _check_lookup_join(self.how, self.right_prefix, self.right_schema, "stream-table")

    def build(self, name: str) -> StreamTableJoinOperator:
        return StreamTableJoinOperator(name, self.how, self.right_prefix, self.right_schema)


@dataclass(frozen=True)
class GlobalTableJoinSpec(BinaryOperatorSpec):
    """Spec of ``stream.join(global_table, on=...)``: look ``on`` up in a table held by every task.

    ``on`` is a field of the stream's values (the fast path) or a function of the row dict that
    returns the table key. Port 0 as for :class:`StreamTableJoinSpec`.
    """

    on: str | Callable[[Row], Any]
    how: str = "inner"
    right_prefix: str = DEFAULT_RIGHT_PREFIX
    right_schema: pa.Schema | None = None
    kind = "global_table_join"

    def __post_init__(self) -> None:
        if not (isinstance(self.on, str) and self.on) and not callable(self.on):
            raise ConfigError(
                f"on must be the name of a stream field holding the table key, or a function "
                f"row -> key, got {self.on!r}"
            )
        _check_lookup_join(self.how, self.right_prefix, self.right_schema, "stream-global-table")

    def build(self, name: str) -> GlobalTableJoinOperator:
        return GlobalTableJoinOperator(name, self)


class LookupJoinBase(BinaryOperator):
    """A table on the right, stream lookups on the left; subclasses say what key to look up."""

    ports = 1

    def __init__(self, name: str, how: str, right_prefix: str, right_schema: pa.Schema | None):
        self.name = name
        self.how = how
        self.right_prefix = right_prefix
        self.table = TableState(SideSchema(right_schema, RIGHT, name), name)
        self.ctx = TaskContext(app="", task="", partition=-1)
        self.unmatched_null_keys = 0

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def process_right(self, batch: Batch) -> Sequence[Batch | None]:
        self.table.apply(batch)
        return [None]

    def process_left(self, batch: Batch) -> Sequence[Batch | None]:
        batch, keys = self._lookup_keys(batch)
        if batch.num_rows == 0:
            return [None]
        self.unmatched_null_keys += keys.null_count
        matched, right = self.table.lookup(keys)
        if self.how == "inner" and not matched.all():
            if not matched.any():
                return [None]
            mask = pa.array(matched, pa.bool_())
            batch, right = batch.filter(mask), right.filter(mask)
        return [batch.with_data(joined_data(batch.data, right, self.right_prefix, self.name))]

    def _lookup_keys(self, batch: Batch) -> tuple[Batch, pa.Array]:
        """The records to join (failed ones removed) and the table key of each."""
        raise NotImplementedError

    def table_size(self) -> int:
        """Number of keys in the table state."""
        return len(self.table.store)

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.table.store,)

    def snapshot(self, with_stores: bool = True) -> JoinSnapshot:
        scalars, schemas, items = self.table.snapshot_parts(with_stores)
        return JoinSnapshot(
            type(self).__name__,
            (*scalars, self.unmatched_null_keys),
            schemas,
            (items,) if with_stores else (),
        )

    def restore(self, state: Any, stores: StoreItems | None = None) -> None:
        snap = expect_snapshot(state, self, self.name)
        *scalars, self.unmatched_null_keys = snap.scalars
        self.table.restore_parts(tuple(scalars), snap.schemas, store_items(snap, stores, 0))


class StreamTableJoinOperator(LookupJoinBase):
    """Joins each stream record with the co-partitioned table's value for its key."""

    def _lookup_keys(self, batch: Batch) -> tuple[Batch, pa.Array]:
        check_scalar_keys(batch.keys, self.name)
        return batch, batch.keys


class GlobalTableJoinOperator(LookupJoinBase):
    """Joins each stream record with the global table's value for its ``on`` key."""

    def __init__(self, name: str, spec: GlobalTableJoinSpec) -> None:
        super().__init__(name, spec.how, spec.right_prefix, spec.right_schema)
        self.on = spec.on

    def state_stores(self) -> Sequence[KeyedStore]:
        return ()  # a global table is loaded again from its topic, never checkpointed

    def _lookup_keys(self, batch: Batch) -> tuple[Batch, pa.Array]:
        if isinstance(self.on, str):
            if self.on not in batch.data.schema.names:
                raise OperatorContractError(
                    f"{self.name}: the stream has no field {self.on!r} to look up in the global "
                    f"table (fields: {batch.data.schema.names}); fix on= or map the values first"
                )
            keys = batch.data.column(self.on)
            check_scalar_keys(keys, self.name)
            return batch, keys
        fn = self.on
        out: list[Any] = []
        keep: list[int] = []
        for i, row in enumerate(batch.rows()):
            try:
                out.append(fn(row))
            except Exception as exc:
                self.ctx.report_failure(
                    RecordFailure.from_exception(
                        self.name, exc, batch.offsets[i].as_py(), batch.keys[i].as_py(), row
                    )
                )
                continue
            keep.append(i)
        if len(keep) < batch.num_rows:
            batch = batch.take(keep)
        try:
            keys = pa.array(out)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise OperatorContractError(
                f"{self.name}: the on= function returned keys of mixed types ({exc}); return "
                "one scalar type (str, int, bytes)"
            ) from exc
        check_scalar_keys(keys, self.name)
        return batch, keys
