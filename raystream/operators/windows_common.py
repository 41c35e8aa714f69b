"""Machinery shared by the keyed aggregate operators (windowed and running).

* Null keys: records whose key (or event timestamp) is null are left out of aggregations, as in
  Kafka Streams, and counted in ``dropped_null_keys`` (``dropped_null_timestamps``); they do not
  advance the watermark and are not sent to the late port (they are not late).
* Keys may be of any scalar Arrow type (ints, strings, binary, temporal...); state is keyed by
  the key's Python value. Nested keys (lists, structs) are refused: re-key first.
* Every accepted record gets an arrival sequence number (``seq``) that orders ties for
  ``first``/``last``/``collect`` and survives snapshots.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import OperatorContractError, TopologyError
from raystream.operators.aggregations import Aggregation
from raystream.operators.aggregations_batch import batch_partials
from raystream.operators.base import Batch, Operator, TaskContext
from raystream.operators.keyed import check_scalar_keys, cumulative_watermark
from raystream.state.base import KeyedStore
from raystream.state.memory import MemoryStore

if TYPE_CHECKING:
    from raystream.operators.windows import WindowedAggregateSpec

#: The watermark before any record: far below any real event time, far from int64 overflow.
MIN_TIME = -(2**62)

#: One result: ``(key, window_start, window_end, accumulators, output timestamp)``.
ResultRow = tuple[Any, int | None, int | None, tuple[Any, ...], int]


@dataclass(frozen=True)
class Prepared:
    """A batch ready for aggregation: null keys removed, keys coded, times as NumPy arrays."""

    batch: Batch
    ts: np.ndarray  # int64 event time per record
    wm: np.ndarray  # int64 watermark right after each record (cumulative, batch order)
    seq: np.ndarray  # int64 arrival sequence number
    codes: np.ndarray  # int64 index into ``uniques`` per record
    uniques: list[Any]  # the distinct keys of the batch as Python values


@dataclass(frozen=True)
class AggregateSnapshot:
    """Immutable, picklable state of a keyed aggregate operator (plain values and tuples)."""

    watermark: int | None
    seq: int
    counters: tuple[int, int, int]  # dropped_null_keys, dropped_null_timestamps, late_records
    schema: bytes | None  # serialized Arrow schema: "__key" plus the value fields seen
    items: tuple[tuple[Any, Any], ...]


class KeyedAggregateBase(Operator):
    """Key coding, accumulator folding, result building and snapshots for keyed aggregates."""

    def __init__(self, name: str, aggs: tuple[tuple[str, Aggregation], ...], key_name: str) -> None:
        self.name = name
        self.names = [n for n, _ in aggs]
        self.aggs = [a for _, a in aggs]
        self.key_name = key_name
        self.store = MemoryStore()
        self.ctx = TaskContext(app="", task="", partition=-1)
        self.watermark: int | None = None
        self.dropped_null_keys = 0
        self.dropped_null_timestamps = 0
        self.late_records = 0
        self._seq = 0
        self._key_type: pa.DataType | None = None
        self._field_types: dict[str, pa.DataType] = {}
        self._fields = sorted({f for a in self.aggs for f in a.fields()})
        self._custom = [i for i, a in enumerate(self.aggs) if not a.vectorised]

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    # -- input -------------------------------------------------------------------------------

    def _prepare(self, batch: Batch, out_of_orderness: int = 0) -> Prepared | None:
        if batch.num_rows == 0:
            return None
        keys = batch.keys
        check_scalar_keys(
            keys,
            f"{self.name}: cannot aggregate by a {{type}} key; re-key the stream by a "
            "scalar (string, int, binary) with group_by(...) first",
        )
        key_ok = keys.is_valid()
        ts_ok = batch.timestamps.is_valid()
        n_null_keys = keys.null_count
        n_null_ts = batch.num_rows - n_null_keys - int(pc.sum(pc.and_(key_ok, ts_ok)).as_py() or 0)
        if n_null_keys or n_null_ts:
            self.dropped_null_keys += n_null_keys
            self.dropped_null_timestamps += n_null_ts
            batch = batch.filter(pc.and_(key_ok, ts_ok))
            if batch.num_rows == 0:
                return None
        if keys.type != pa.null():
            self._key_type = batch.keys.type
        for f in batch.data.schema:
            self._field_types[f.name] = f.type
        n = batch.num_rows
        ts = batch.timestamps.to_numpy(zero_copy_only=False).astype(np.int64)
        enc = pc.dictionary_encode(batch.keys)
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        prev = MIN_TIME if self.watermark is None else self.watermark
        wm = cumulative_watermark(ts, out_of_orderness, prev)
        self.watermark = int(wm[-1])
        return Prepared(batch, ts, wm, seq, codes, enc.dictionary.to_pylist())

    def _value_table(self, p: Prepared, rows: np.ndarray) -> pa.Table:
        """The aggregated fields of the records at ``rows`` (all columns when custom reducers)."""
        data = p.batch.data
        cols = data.schema.names if self._custom else self._fields
        missing = [f for f in self._fields if f not in data.schema.names]
        if missing:
            raise OperatorContractError(
                f"{self.name}: aggregated field(s) {missing} are not in the records "
                f"(fields: {data.schema.names}); fix the field name or map the values first"
            )
        return pa.Table.from_batches([data.select(cols)]).take(pa.array(rows, pa.int64()))

    # -- folding -------------------------------------------------------------------------------

    def _initial(self) -> tuple[Any, ...]:
        return tuple(a.initial() for a in self.aggs)

    def _fold(
        self,
        accs_per_group: Sequence[tuple[Any, ...]],
        table: pa.Table,
        gid: np.ndarray,
        ts: np.ndarray,
        seq: np.ndarray,
        with_custom: bool = True,
    ) -> list[tuple[Any, ...]]:
        """Each group's accumulators with its rows added (vectorised, custom reducers by row).

        Rows of a group are added to custom reducers in the order they appear in ``table``
        (callers pass them in arrival order); ``with_custom=False`` leaves custom reducers alone
        (for callers that already added the rows).
        """
        n_groups = len(accs_per_group)
        partials = batch_partials(self.aggs, table, gid, n_groups, ts, seq)
        if not self._custom and self.aggs:  # merge column by column
            columns: list[list[Any]] = []
            for i, agg in enumerate(self.aggs):
                merge, part = agg.merge, partials[i]
                assert part is not None
                columns.append([merge(a[i], b) for a, b in zip(accs_per_group, part, strict=True)])
            return list(zip(*columns, strict=True))
        out = [list(a) for a in accs_per_group]
        for i, agg in enumerate(self.aggs):
            part = partials[i]
            if part is not None:
                for g in range(n_groups):
                    out[g][i] = agg.merge(out[g][i], part[g])
        if self._custom and with_custom:
            rows = table.to_pylist() if table.num_columns else [{} for _ in range(len(gid))]
            for r, g in enumerate(gid.tolist()):
                for i in self._custom:
                    out[g][i] = self.aggs[i].add(out[g][i], rows[r])
        return [tuple(a) for a in out]

    # -- output --------------------------------------------------------------------------------

    def _result_batch(self, rows: Sequence[Any], windowed: bool = True) -> Batch | None:
        if not rows:
            return None
        keys = pa.array([r[0] for r in rows], type=self._key_type)
        cols: dict[str, pa.Array] = {self.key_name: keys}
        if windowed:
            cols["window_start"] = pa.array([r[1] for r in rows], pa.int64())
            cols["window_end"] = pa.array([r[2] for r in rows], pa.int64())
        for i, (name, agg) in enumerate(zip(self.names, self.aggs, strict=True)):
            field = agg.fields()[0] if agg.fields() else None
            values = [agg.result(r[3][i]) for r in rows]
            cols[name] = _column(values, agg.result_type(self._field_types.get(field or "")), name)
        data = pa.RecordBatch.from_pydict(cols)
        return Batch(
            data,
            keys,
            pa.array([r[4] for r in rows], pa.int64()),
            pa.nulls(len(rows), pa.int64()),
        )

    # -- snapshots -----------------------------------------------------------------------------

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.store,)

    def snapshot(self, with_stores: bool = True) -> AggregateSnapshot:
        items = tuple(self.store.items()) if with_stores else ()
        if self._custom:
            items = copy.deepcopy(items)  # user accumulators may be mutable
        fields = [pa.field(k, t) for k, t in self._field_types.items()]
        if self._key_type is not None:
            fields.insert(0, pa.field("__key", self._key_type))
        schema = pa.schema(fields).serialize().to_pybytes() if fields else None
        return AggregateSnapshot(
            self.watermark,
            self._seq,
            (self.dropped_null_keys, self.dropped_null_timestamps, self.late_records),
            schema,
            items,
        )

    def restore(
        self, state: Any, stores: Sequence[Iterable[tuple[Hashable, Any]]] | None = None
    ) -> None:
        if not isinstance(state, AggregateSnapshot):
            raise TopologyError(
                f"{self.name}: cannot restore from a {type(state).__name__}; the checkpoint "
                "was not written by this operator kind"
            )
        self.watermark = state.watermark
        self._seq = state.seq
        self.dropped_null_keys, self.dropped_null_timestamps, self.late_records = state.counters
        self._key_type = None
        self._field_types = {}
        if state.schema is not None:
            for f in pa.ipc.read_schema(pa.py_buffer(state.schema)):
                if f.name == "__key":
                    self._key_type = f.type
                else:
                    self._field_types[f.name] = f.type
        items = state.items if stores is None else tuple(stores[0])
        self.store.load(copy.deepcopy(items) if self._custom else items)
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        """Rebuild in-memory indexes (e.g. close-time heaps) from the store after a restore."""


def _column(values: list[Any], typ: pa.DataType | None, name: str) -> pa.Array:
    if typ is not None:
        try:
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise OperatorContractError(
            f"results of aggregation {name!r} cannot form one Arrow column (mixed types?): {exc}"
        ) from exc


class WindowOperatorBase(KeyedAggregateBase):
    """A windowed aggregate: watermark, late port, emit modes; subclasses own window logic.

    Subclasses implement :meth:`_absorb` (add a prepared batch to state, report late records
    and changed windows), :meth:`_rows` (result rows of changed windows) and :meth:`_close`
    (evict the windows the watermark closed, returning their rows when asked).
    """

    ports = 2

    def __init__(self, name: str, spec: WindowedAggregateSpec) -> None:
        super().__init__(name, spec.aggs, spec.key_name)
        self.spec = spec
        self.grace = spec.grace_ms
        self.final = spec.emit == "final"
        #: Window bounds and watermark of the records last sent to port 1 (aligned with them).
        self.last_late_info: pa.RecordBatch | None = None

    def process(self, batch: Batch) -> Sequence[Batch | None]:
        p = self._prepare(batch, self.spec.out_of_orderness_ms)
        self.last_late_info = None
        if p is None:
            return [None, None]
        late, late_start, late_end, changed = self._absorb(p)
        rows = [] if self.final else self._rows(changed)
        rows += self._close(collect=self.final)
        late_batch = None
        if late.any():
            self.late_records += int(late.sum())
            late_batch = p.batch.filter(pa.array(late))
            self.last_late_info = pa.RecordBatch.from_pydict(
                {
                    "window_start": pa.array(late_start[late], pa.int64()),
                    "window_end": pa.array(late_end[late], pa.int64()),
                    "watermark": pa.array(p.wm[late], pa.int64()),
                }
            )
        return [self._result_batch(rows), late_batch]

    def on_watermark(self, watermark: int) -> Sequence[Batch | None]:
        if self.watermark is not None and watermark <= self.watermark:
            return [None, None]
        self.watermark = int(watermark)
        return [self._result_batch(self._close(collect=self.final)), None]

    def open_windows(self) -> int:
        """Number of windows currently held in state (for tests and the state-size metric)."""
        raise NotImplementedError

    def _absorb(self, p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        """Add ``p`` to state. Returns (late mask, late window starts, ends, changed windows)."""
        raise NotImplementedError

    def _rows(self, changed: list[Any]) -> list[Any]:
        """Current result rows of the ``changed`` windows."""
        raise NotImplementedError

    def _close(self, collect: bool) -> list[Any]:
        """Evict every window the watermark closed; their rows when ``collect``."""
        raise NotImplementedError
