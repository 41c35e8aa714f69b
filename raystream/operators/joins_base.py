"""The contract of two-input operators (joins) and the conventions every join shares.

Sides. A join has a *left* and a *right* input. The runtime calls :meth:`BinaryOperator.
process_left` or :meth:`BinaryOperator.process_right` with one side's micro-batch at a time, in
arrival order across both sides; :meth:`BinaryOperator.process` (the one-input entry point) is
refused. Both calls return one batch (or None) per output port. Port 1, when an operator has it,
carries the *late* records of the side that was just processed, untouched: the runtime knows their
side from the call that returned them.

Keys. Both sides' ``batch.keys`` are the join keys, already extracted and co-partitioned by the
runtime; any scalar Arrow type (nested keys are refused: re-key first). State is keyed by the key's
Python value, so both sides must use the same key type (``int64`` 7 and ``"7"`` do not match).

Changelogs. A table input (the right side of a stream-table join, both sides of a table-table join)
is a *changelog*: each record upserts its key, unless its bool column ``__tombstone``
(:data:`TOMBSTONE`) is true, which deletes the key (the value columns of a tombstone are ignored).
A batch without that column has no tombstones; a null in it means false. Table outputs (the
materialiser, table-table joins) use the same convention and always carry the column.

Result columns. Join results hold the left value columns, then the right value columns. A right
column whose name is also a left column's is renamed ``right_prefix + name`` (default ``right_``);
other names are kept. If a renamed column still clashes, the join refuses the batch
(:class:`~raystream.errors.OperatorContractError`): rename a column with ``map`` first or choose
another prefix. A side with no record (left join without a match...) gives nulls.

Schemas. A side's value columns come from its declared ``pa.Schema`` when the spec has one (columns
not in it are dropped, others cast to it) or are learned: the union of the columns seen so far, in
order of first appearance, with Arrow's permissive type promotion. Declare the schemas (the topology
knows them from the serdes) for a result schema that never changes; a learned schema widens when a
side shows a new column, and is part of the operator's snapshot.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import BinaryInputError, ConfigError, OperatorContractError, TopologyError
from raystream.operators import keyed
from raystream.operators.base import Batch, Operator, OperatorSpec, Row

LEFT = "left"
RIGHT = "right"
SIDES = (LEFT, RIGHT)

#: The bool column that marks a changelog record as a deletion.
TOMBSTONE = "__tombstone"

DEFAULT_RIGHT_PREFIX = "right_"


class BinaryOperator(Operator):
    """The runtime logic of a two-input node (a join) for one task.

    Updates from either side apply immediately; a record sees the state as of its call, i.e.
    everything the other side delivered in earlier calls.
    """

    def process(self, batch: Batch) -> NoReturn:
        raise BinaryInputError(
            f"{type(self).__name__} has two inputs: call process_left(batch) or "
            "process_right(batch) (or process_side(side, batch)), not process(batch)"
        )

    @abstractmethod
    def process_left(self, batch: Batch) -> Sequence[Batch | None]:
        """Process one micro-batch of the left input; one batch (or None) per output port."""

    @abstractmethod
    def process_right(self, batch: Batch) -> Sequence[Batch | None]:
        """Process one micro-batch of the right input; one batch (or None) per output port."""

    def process_side(self, side: str, batch: Batch) -> Sequence[Batch | None]:
        """Dispatch ``batch`` to :meth:`process_left` or :meth:`process_right` by ``side``."""
        if side == LEFT:
            return self.process_left(batch)
        if side == RIGHT:
            return self.process_right(batch)
        raise BinaryInputError(f"side must be {LEFT!r} or {RIGHT!r}, got {side!r}")


class BinaryOperatorSpec(OperatorSpec):
    """A frozen description of a two-input operator; ``build`` gives a :class:`BinaryOperator`."""

    #: Number of inputs the topology must connect.
    inputs: ClassVar[int] = 2

    @abstractmethod
    def build(self, name: str) -> BinaryOperator:
        """The runtime operator, named ``name`` (unique in the topology)."""


# -- configuration checks ----------------------------------------------------------------------


def check_how(how: object, allowed: Sequence[str], join: str) -> None:
    """Raise :class:`ConfigError` unless ``how`` is one of ``allowed``."""
    if how not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{join} join: how must be one of {options}, got {how!r}")


def check_prefix(prefix: object) -> None:
    """Raise :class:`ConfigError` unless ``prefix`` is a usable column-name prefix."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(
            f"right_prefix must be a non-empty str (it renames clashing right columns), "
            f"got {prefix!r}"
        )


def check_schema(schema: object, field: str) -> None:
    """Raise :class:`ConfigError` unless ``schema`` is None or a ``pa.Schema``."""
    if schema is not None and not isinstance(schema, pa.Schema):
        raise ConfigError(
            f"{field} must be a pyarrow.Schema of the side's value columns or None (learned), "
            f"got {type(schema).__name__}"
        )
    if schema is not None and TOMBSTONE in schema.names:
        raise ConfigError(f"{field} must not contain the {TOMBSTONE!r} column; it is implied")


def check_ms(value: object, field: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a non-negative int of milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{field} must be a non-negative number of ms, got {value!r}")


# -- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinSnapshot:
    """Immutable, picklable state of a join operator (plain values, tuples, schema bytes).

    Stored rows are dicts that the operators never mutate after storing them.
    """

    operator: str  # the operator class, checked on restore
    scalars: tuple[Any, ...]  # watermarks, sequence numbers, counters
    schemas: tuple[bytes | None, ...]  # serialized learned schemas (and key types)
    stores: tuple[tuple[tuple[Any, Any], ...], ...]  # each KeyedStore's items


#: Store contents handed to ``restore`` apart from a snapshot taken ``with_stores=False``.
StoreItems = Sequence[Iterable[tuple[Hashable, Any]]]


def store_items(snap: JoinSnapshot, stores: StoreItems | None, i: int) -> tuple[Any, ...]:
    """The items of a join's ``i``-th store: from the snapshot, or given apart."""
    if stores is None:
        return tuple(snap.stores[i])
    return tuple(stores[i]) if i < len(stores) else ()


def expect_snapshot(state: Any, op: Operator, name: str) -> JoinSnapshot:
    """``state`` as a :class:`JoinSnapshot` written by ``op``'s class, or a clear error."""
    kind = type(op).__name__
    if not isinstance(state, JoinSnapshot) or state.operator != kind:
        got = state.operator if isinstance(state, JoinSnapshot) else type(state).__name__
        raise TopologyError(
            f"{name}: cannot restore a {kind} from a {got} snapshot; the checkpoint was not "
            "written by this operator kind"
        )
    return state


def schema_bytes(schema: pa.Schema | None) -> bytes | None:
    """``schema`` serialized for a snapshot."""
    return None if schema is None else schema.serialize().to_pybytes()


def schema_from_bytes(data: bytes | None) -> pa.Schema | None:
    """The schema :func:`schema_bytes` serialized."""
    return None if data is None else pa.ipc.read_schema(pa.py_buffer(data))


# -- schemas and columns -----------------------------------------------------------------------


class SideSchema:
    """The value columns of one side: declared, or learned from the batches seen."""

    def __init__(self, declared: pa.Schema | None, side: str, op_name: str) -> None:
        self.declared = declared
        self.side = side
        self.op_name = op_name
        self.schema: pa.Schema = declared if declared is not None else pa.schema([])

    def observe(self, schema: pa.Schema) -> None:
        """Widen a learned schema with the value columns of ``schema``."""
        if self.declared is not None:
            return
        fields = [f for f in schema if f.name != TOMBSTONE]
        current = self.schema
        known = set(current.names)
        if all(f.name in known and current.field(f.name).type == f.type for f in fields):
            return
        try:
            self.schema = pa.unify_schemas(
                [current, pa.schema(fields)], promote_options="permissive"
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise OperatorContractError(
                f"{self.op_name}: the {self.side} side's columns changed type ({exc}); declare "
                f"the {self.side} schema in the join or cast the column upstream"
            ) from exc

    def conform(self, data: pa.RecordBatch) -> pa.RecordBatch:
        """``data`` as this schema: missing columns null, others cast, extra ones dropped."""
        n = data.num_rows
        names = data.schema.names
        arrays = []
        for f in self.schema:
            if f.name not in names:
                arrays.append(pa.nulls(n, f.type))
                continue
            col = data.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise OperatorContractError(
                        f"{self.op_name}: {self.side} column {f.name!r} of type {col.type} cannot "
                        f"be cast to the schema's {f.type}: {exc}"
                    ) from exc
            arrays.append(col)
        return record_batch(arrays, self.schema.names, n)

    def rows_batch(self, rows: Sequence[Row | None]) -> pa.RecordBatch:
        """``rows`` (None for an all-null row) as a batch of this schema."""
        if not self.schema.names:
            return record_batch([], [], len(rows))
        try:
            return pa.RecordBatch.from_pylist(
                [r if r is not None else {} for r in rows], schema=self.schema
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise OperatorContractError(
                f"{self.op_name}: stored {self.side} rows do not fit the {self.side} schema "
                f"{self.schema} ({exc}); declare a schema that holds every version's values"
            ) from exc


def record_batch(arrays: Sequence[pa.Array], names: Sequence[str], n: int) -> pa.RecordBatch:
    """A batch of ``n`` rows from ``arrays`` (which may be empty: a batch with no columns)."""
    if not arrays:
        return pa.RecordBatch.from_struct_array(pa.array([{}] * n, pa.struct([])))
    return pa.RecordBatch.from_arrays(list(arrays), names=list(names))


def joined_data(
    left: pa.RecordBatch, right: pa.RecordBatch, prefix: str, op_name: str
) -> pa.RecordBatch:
    """Left columns then right columns, renaming right ones that clash (see module doc)."""
    left_names = left.schema.names
    taken = set(left_names)
    names = list(left_names)
    for name in right.schema.names:
        out = prefix + name if name in left_names else name
        if out in taken:
            raise OperatorContractError(
                f"{op_name}: right column {name!r} would be named {out!r}, which is already a "
                "result column; rename it with map() first or pass another right_prefix"
            )
        taken.add(out)
        names.append(out)
    return record_batch([*left.columns, *right.columns], names, left.num_rows)


def check_scalar_keys(keys: pa.Array, op_name: str) -> None:
    """Refuse nested join keys (lists, structs), whose Python values cannot key the state."""
    keyed.check_scalar_keys(
        keys,
        f"{op_name}: cannot join on a {{type}} key; re-key both sides by a scalar "
        "(string, int, binary) first",
    )


def tombstone_mask(data: pa.RecordBatch, op_name: str) -> np.ndarray:
    """The rows of a changelog batch that are tombstones (see module doc), as a NumPy bool array."""
    if TOMBSTONE not in data.schema.names:
        return np.zeros(data.num_rows, bool)
    col = data.column(TOMBSTONE)
    if not pa.types.is_boolean(col.type):
        raise OperatorContractError(
            f"{op_name}: the {TOMBSTONE!r} column must be bool (true deletes the key), got "
            f"{col.type}"
        )
    return np.asarray(pc.fill_null(col, False).to_numpy(zero_copy_only=False), bool)


def value_columns(data: pa.RecordBatch) -> pa.RecordBatch:
    """``data`` without the tombstone column."""
    if TOMBSTONE not in data.schema.names:
        return data
    return data.drop_columns([TOMBSTONE])


def with_tombstones(data: pa.RecordBatch, tomb: np.ndarray) -> pa.RecordBatch:
    """``data`` plus the tombstone column ``tomb``."""
    return record_batch(
        [*data.columns, pa.array(tomb, pa.bool_())], [*data.schema.names, TOMBSTONE], len(tomb)
    )


def key_array(values: Sequence[Any], key_type: pa.DataType | None) -> pa.Array:
    """State keys back to an Arrow array of the input's key type."""
    return pa.array(list(values), type=key_type)


def empty_ports(ports: int) -> list[Batch | None]:
    """Nothing on every port."""
    return [None] * ports
