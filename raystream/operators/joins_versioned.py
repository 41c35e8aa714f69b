"""The versioned (as-of) stream-table join: a stream record meets the table value valid at its time.

Left = the stream, right = the table's changelog (conventions in
:mod:`raystream.operators.joins_base`). As Kafka Streams' versioned key-value stores and joins:

* The table keeps, per key, a history of versions ``(valid_from, row)`` sorted by ``valid_from``
  (the changelog record's event time; a tombstone is a version with no row, which ends the
  previous one's validity). Records may arrive out of order: a version is inserted where its time
  puts it; a record with the same ``valid_from`` as a stored version replaces it.
* ``T`` is the table's observed time: the max event time of the changelog records seen, and the
  *horizon* is ``T - history_retention``. A changelog record with ``valid_from < horizon`` is
  dropped (counted in ``expired_updates``): the history it would rewrite may be gone.
* A stream record at ``t`` joins the latest version of its key with ``valid_from <= t``, unless that
  version is a tombstone or there is none. A record older than the horizon (``t < horizon``, the
  horizon as of its call) finds nothing, whatever the history still holds (counted in
  ``too_old_lookups``), so results never depend on when old versions are dropped. Stream records
  with a null key or timestamp find nothing either. ``inner`` drops records without a match;
  ``left`` keeps them with null table columns. Results keep the stream record's key, timestamp
  and offset, in input order.
* Memory is bounded: after each table batch, every version whose successor's ``valid_from`` is
  ``<= horizon`` is dropped (no lookup or accepted update can reach it), and so is a leading
  tombstone at or before the horizon; a key left with no version is deleted. The latest version of
  a key is kept however old it is.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import ConfigError
from raystream.operators.base import Batch, Row, TaskContext
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
    schema_bytes,
    schema_from_bytes,
    store_items,
    tombstone_mask,
    value_columns,
)
from raystream.state.base import KeyedStore
from raystream.state.memory import MemoryStore
from raystream.timeutil import Duration, parse_duration

#: One version of a key: ``(valid_from, row)``; ``row`` None is a tombstone.
Version = tuple[int, Row | None]


@dataclass(frozen=True)
class VersionedTableJoinSpec(BinaryOperatorSpec):
    """Spec of ``stream.join(table, versioned=...)``: join each record with the value valid at its
    event time (see the module doc). ``history_retention_ms`` bounds how far back lookups reach.
    """

    history_retention_ms: int
    how: str = "inner"
    right_prefix: str = DEFAULT_RIGHT_PREFIX
    right_schema: pa.Schema | None = None
    kind = "versioned_table_join"

    def __post_init__(self) -> None:
        v = self.history_retention_ms
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(
                f"history_retention must be a non-negative number of ms (how far back in event "
                f"time stream records may look up versions), got {v!r}"
            )
        check_how(self.how, ("inner", "left"), "versioned stream-table")
        check_prefix(self.right_prefix)
        check_schema(self.right_schema, "right_schema")

    @staticmethod
    def of(
        history_retention: Duration,
        *,
        how: str = "inner",
        right_prefix: str = DEFAULT_RIGHT_PREFIX,
        right_schema: pa.Schema | None = None,
    ) -> VersionedTableJoinSpec:
        """Build a spec from user-facing values (``history_retention`` as ``"1h"`` or ms)."""
        return VersionedTableJoinSpec(
            parse_duration(history_retention, "history_retention"), how, right_prefix, right_schema
        )

    def build(self, name: str) -> VersionedTableJoinOperator:
        return VersionedTableJoinOperator(name, self)


class VersionedTableJoinOperator(BinaryOperator):
    """Joins stream records with the table version valid at their event time."""

    ports = 1

    def __init__(self, name: str, spec: VersionedTableJoinSpec) -> None:
        self.name = name
        self.how = spec.how
        self.right_prefix = spec.right_prefix
        self.retention = spec.history_retention_ms
        self.schema = SideSchema(spec.right_schema, RIGHT, name)
        #: key -> tuple of versions sorted by valid_from.
        self.store = MemoryStore()
        self.ctx = TaskContext(app="", task="", partition=-1)
        self.table_time: int | None = None
        self.dropped_null_keys = 0  # changelog records with a null key or timestamp
        self.expired_updates = 0
        self.too_old_lookups = 0
        self.unmatched_null_keys = 0  # stream records with a null key or timestamp
        # Version times to revisit for pruning, (valid_from, tie-breaker, key).
        self._due: list[tuple[int, int, Any]] = []
        self._n = 0

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    @property
    def horizon(self) -> int | None:
        """``T - history_retention``: the oldest event time lookups and updates may reach."""
        return None if self.table_time is None else self.table_time - self.retention

    def versions(self, key: Any) -> tuple[Version, ...]:
        """The stored history of ``key`` (for tests and views)."""
        return tuple(self.store.get(key, ()))

    # -- table side ------------------------------------------------------------------------------

    def process_right(self, batch: Batch) -> Sequence[Batch | None]:
        if batch.num_rows == 0:
            return [None]
        check_scalar_keys(batch.keys, self.name)
        tomb = tombstone_mask(batch.data, self.name)
        values = value_columns(batch.data)
        self.schema.observe(values.schema)
        rows = self.schema.conform(values).to_pylist()
        store = self.store
        for i, (key, ts, dead) in enumerate(
            zip(batch.keys.to_pylist(), batch.timestamps.to_pylist(), tomb.tolist(), strict=True)
        ):
            if key is None or ts is None:
                self.dropped_null_keys += 1
                continue
            self.table_time = ts if self.table_time is None else max(self.table_time, ts)
            if ts < self.table_time - self.retention:
                self.expired_updates += 1
                continue
            history = list(store.get(key, ()))
            version: Version = (ts, None if dead else rows[i])
            pos = bisect.bisect_left(history, ts, key=lambda v: v[0])
            if pos < len(history) and history[pos][0] == ts:
                history[pos] = version
            else:
                history.insert(pos, version)
            store.put(key, tuple(history))
            self._n += 1
            heapq.heappush(self._due, (ts, self._n, key))
        self._prune()
        return [None]

    def _prune(self) -> None:
        horizon = self.horizon
        if horizon is None:
            return
        due = self._due
        while due and due[0][0] <= horizon:
            key = heapq.heappop(due)[2]
            history = self.store.get(key)
            if history is None:
                continue
            kept = [v for i, v in enumerate(history[:-1]) if history[i + 1][0] > horizon]
            kept.append(history[-1])
            while kept and kept[0][1] is None and kept[0][0] <= horizon:
                kept.pop(0)
            if not kept:
                self.store.delete(key)
            elif len(kept) < len(history):
                self.store.put(key, tuple(kept))

    # -- stream side -----------------------------------------------------------------------------

    def process_left(self, batch: Batch) -> Sequence[Batch | None]:
        n = batch.num_rows
        if n == 0:
            return [None]
        check_scalar_keys(batch.keys, self.name)
        ok = np.asarray(
            pc.and_(batch.keys.is_valid(), batch.timestamps.is_valid()).to_numpy(
                zero_copy_only=False
            ),
            bool,
        )
        self.unmatched_null_keys += int(n - ok.sum())
        ts = pc.fill_null(batch.timestamps, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        horizon = self.horizon
        if horizon is not None:
            too_old = ok & (ts < horizon)
            self.too_old_lookups += int(too_old.sum())
            ok &= ~too_old
        matched = np.zeros(n, bool)
        version_of = np.zeros(n, np.int64)
        rows: list[Row] = []
        if ok.any() and batch.keys.type != pa.null():
            rows = self._match(batch.keys, ts, ok, matched, version_of)
        if self.how == "inner":
            if not matched.any():
                return [None]
            if not matched.all():
                keep = pa.array(matched, pa.bool_())
                batch = batch.filter(keep)
                version_of, matched = version_of[matched], matched[matched]
        right = self.schema.rows_batch(rows).take(pa.array(version_of, pa.int64(), mask=~matched))
        return [batch.with_data(joined_data(batch.data, right, self.right_prefix, self.name))]

    def _match(
        self,
        keys: pa.Array,
        ts: np.ndarray,
        ok: np.ndarray,
        matched: np.ndarray,
        version_of: np.ndarray,
    ) -> list[Row]:
        """Fill ``matched`` / ``version_of`` (index into the returned rows) for the ``ok`` records.

        Versions and records are sorted together by (key code, time, versions first), so each
        record's version is the last version before it in that order, if it has the same key.
        """
        enc = pc.dictionary_encode(keys)
        codes = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        v_code: list[int] = []
        v_from: list[int] = []
        v_row: list[Row | None] = []
        get = self.store.get
        for c, key in enumerate(enc.dictionary.to_pylist()):
            for valid_from, row in get(key, ()):
                v_code.append(c)
                v_from.append(valid_from)
                v_row.append(row)
        nv = len(v_code)
        if nv == 0:
            return []
        recs = np.flatnonzero(ok)
        all_code = np.concatenate([np.asarray(v_code, np.int64), codes[recs]])
        all_time = np.concatenate([np.asarray(v_from, np.int64), ts[recs]])
        is_rec = np.concatenate([np.zeros(nv, np.int8), np.ones(len(recs), np.int8)])
        order = np.lexsort((is_rec, all_time, all_code))
        rec_sorted = is_rec[order] == 1
        last = np.maximum.accumulate(np.where(rec_sorted, -1, np.arange(len(order))))
        rec_pos = np.flatnonzero(rec_sorted)
        found = last[rec_pos] >= 0
        vid = np.where(found, order[np.maximum(last[rec_pos], 0)], 0)
        rec_idx = order[rec_pos] - nv
        v_code_arr = all_code[:nv]
        has_row = np.fromiter((r is not None for r in v_row), bool, nv)
        hit = found & (v_code_arr[vid] == codes[recs[rec_idx]]) & has_row[vid]
        targets = recs[rec_idx[hit]]
        matched[targets] = True
        used, inverse = np.unique(vid[hit], return_inverse=True)
        version_of[targets] = inverse
        return [cast(Row, v_row[v]) for v in used.tolist()]  # hits have rows

    # -- snapshots -------------------------------------------------------------------------------

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.store,)

    def snapshot(self, with_stores: bool = True) -> JoinSnapshot:
        learned = None if self.schema.declared is not None else self.schema.schema
        return JoinSnapshot(
            type(self).__name__,
            (
                self.table_time,
                self.dropped_null_keys,
                self.expired_updates,
                self.too_old_lookups,
                self.unmatched_null_keys,
            ),
            (schema_bytes(learned),),
            (tuple(self.store.items()),) if with_stores else (),
        )

    def restore(self, state: Any, stores: StoreItems | None = None) -> None:
        snap = expect_snapshot(state, self, self.name)
        (
            self.table_time,
            self.dropped_null_keys,
            self.expired_updates,
            self.too_old_lookups,
            self.unmatched_null_keys,
        ) = snap.scalars
        learned = schema_from_bytes(snap.schemas[0])
        if learned is not None:
            self.schema.schema = learned
        self.store.load(store_items(snap, stores, 0))
        self._due, self._n = [], 0
        for key, history in self.store.items():
            for valid_from, _ in history:
                self._n += 1
                self._due.append((valid_from, self._n, key))
        heapq.heapify(self._due)
