"""The stream-stream windowed join (inner, left, outer), as Kafka Streams' ``JoinWindows``.

Conventions (sides, keys, result column names, schemas) are in
:mod:`raystream.operators.joins_base`. Both sides are streams of events with the same key.

Matching. A left record at ``tl`` and a right record at ``tr`` with equal keys form a pair when
``tl - before <= tr <= tl + after`` (both bounds inclusive; ``of(window)`` sets both to
``window``: ``|tl - tr| <= window``). A pair is emitted once, when its second record arrives, with
the left columns then the right columns, the key, ``max(tl, tr)`` as timestamp and the arriving
record's offset.

Time. One watermark ``W = max(event time seen on either side) - out_of_orderness`` (raised also by
``on_watermark``), updated record by record in batch order, including the record being processed,
exactly as the window operators do (so results never depend on where batch boundaries fall). A
record's *join window* covers the other side's times it can match; it closes, inclusive end plus
grace as for sliding windows, when::

    left record at tl:   W >= tl + after + 1 + grace     (it matches tr <= tl + after)
    right record at tr:  W >= tr + before + 1 + grace    (it matches tl <= tr + before)

A record whose window is closed when it arrives is *late*: it joins nothing, is not buffered, and
goes untouched to port 1 (late records of the side being processed). Records with a null key or
timestamp are dropped and counted; they do not move the watermark and are not late.

Buffers. Every on-time record is buffered until no on-time record of the other side can match
it any more, that is until ``W >= t + before + after + 1 + grace`` (either side; this is Kafka
Streams' window-store retention ``before + after + grace``). Then it is evicted; for ``left``
joins an evicted left record that never matched is emitted once with null right columns, for
``outer`` joins an evicted record of either side that never matched is emitted once with nulls
for the other side (no spurious null results, as Kafka Streams since 3.1). Such rows keep the
record's own key, timestamp and offset. The buffers hold one store entry per record, under
``(key, arrival seq)``, so a record is written once, flagged once when it first matches and
deleted once; an in-memory index of each key's entries is rebuilt from them on restore.

Output order of one call: the pairs, by arriving record (input order) then partner (event time,
then arrival); then the unmatched rows evicted by the call, by (event time, arrival).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import ConfigError
from raystream.operators.base import Batch, Row, TaskContext
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
    check_ms,
    check_prefix,
    check_scalar_keys,
    check_schema,
    expect_snapshot,
    joined_data,
    key_array,
    schema_bytes,
    schema_from_bytes,
    store_items,
)
from raystream.operators.keyed import cumulative_watermark
from raystream.operators.windows_common import MIN_TIME
from raystream.state.base import KeyedStore
from raystream.state.memory import MemoryStore
from raystream.timeutil import Duration, parse_duration

STREAM_STREAM_HOWS = ("inner", "left", "outer")

#: A buffered record, stored under ``(key, seq)``: ``(event time, offset, row, matched)``.
Entry = tuple[int, int | None, Row, bool]


@dataclass(frozen=True)
class StreamStreamJoinSpec(BinaryOperatorSpec):
    """Spec of ``stream.join(other_stream, window=..., how=...)`` (see the module doc).

    Port 0 carries the join results, port 1 the late records of the side being processed.
    """

    before_ms: int
    after_ms: int
    grace_ms: int = 0
    out_of_orderness_ms: int = 0
    how: str = "inner"
    right_prefix: str = DEFAULT_RIGHT_PREFIX
    left_schema: pa.Schema | None = None
    right_schema: pa.Schema | None = None
    kind = "stream_stream_join"
    ports = 2

    def __post_init__(self) -> None:
        check_ms(self.before_ms, "join window before")
        check_ms(self.after_ms, "join window after")
        check_ms(self.grace_ms, "grace")
        check_ms(self.out_of_orderness_ms, "out_of_orderness")
        check_how(self.how, STREAM_STREAM_HOWS, "stream-stream")
        check_prefix(self.right_prefix)
        check_schema(self.left_schema, "left_schema")
        check_schema(self.right_schema, "right_schema")

    @staticmethod
    def of(
        window: Duration | None = None,
        *,
        before: Duration | None = None,
        after: Duration | None = None,
        grace: Duration = 0,
        out_of_orderness: Duration = 0,
        how: str = "inner",
        right_prefix: str = DEFAULT_RIGHT_PREFIX,
        left_schema: pa.Schema | None = None,
        right_schema: pa.Schema | None = None,
    ) -> StreamStreamJoinSpec:
        """Build a spec from user-facing durations (``"30m"`` or ms).

        ``window`` sets both bounds (``|tl - tr| <= window``); ``before`` / ``after`` override
        one bound each (right records up to ``before`` earlier / ``after`` later than the left).
        """
        if window is None and (before is None or after is None):
            raise ConfigError(
                "a stream-stream join needs a window: give window= (e.g. '30m'), or both "
                "before= and after="
            )
        w = None if window is None else parse_duration(window, "join window")
        return StreamStreamJoinSpec(
            parse_duration(before if before is not None else w, "join window before"),
            parse_duration(after if after is not None else w, "join window after"),
            parse_duration(grace, "grace"),
            parse_duration(out_of_orderness, "out_of_orderness"),
            how,
            right_prefix,
            left_schema,
            right_schema,
        )

    def build(self, name: str) -> StreamStreamJoinOperator:
        return StreamStreamJoinOperator(name, self)


class StreamStreamJoinOperator(BinaryOperator):
    """Joins two co-partitioned streams within a time window; buffers both sides by key."""

    ports = 2

    def __init__(self, name: str, spec: StreamStreamJoinSpec) -> None:
        self.name = name
        self.before = spec.before_ms
        self.after = spec.after_ms
        self.grace = spec.grace_ms
        self.ooo = spec.out_of_orderness_ms
        self.right_prefix = spec.right_prefix
        self.schemas = {
            LEFT: SideSchema(spec.left_schema, LEFT, name),
            RIGHT: SideSchema(spec.right_schema, RIGHT, name),
        }
        #: Per side, (key, seq) -> buffered entry.
        self.buffers = {LEFT: MemoryStore(), RIGHT: MemoryStore()}
        #: Per side, key -> the seqs of its buffered entries, in arrival order (not state: it is
        #: rebuilt from the buffers on restore).
        self._index: dict[str, dict[Hashable, dict[int, None]]] = {LEFT: {}, RIGHT: {}}
        self.emit_unmatched = {LEFT: spec.how in ("left", "outer"), RIGHT: spec.how == "outer"}
        self.ctx = TaskContext(app="", task="", partition=-1)
        self.watermark: int | None = None
        self.key_type: pa.DataType | None = None
        self.dropped_null_keys = 0
        self.dropped_null_timestamps = 0
        self.late_records = 0
        self._seq = 0
        # One (event time, seq, side, key) per buffered record, to evict in (time, seq) order.
        self._due: list[tuple[int, int, str, Hashable]] = []

    def open(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def buffered(self) -> int:
        """Number of records held in both buffers (for tests and the state-size metric)."""
        return sum(len(store) for store in self.buffers.values())

    # -- input -----------------------------------------------------------------------------------

    def process_left(self, batch: Batch) -> Sequence[Batch | None]:
        return self._process(LEFT, batch)

    def process_right(self, batch: Batch) -> Sequence[Batch | None]:
        return self._process(RIGHT, batch)

    def on_watermark(self, watermark: int) -> Sequence[Batch | None]:
        if self.watermark is not None and watermark <= self.watermark:
            return [None, None]
        self.watermark = int(watermark)
        return [_concat(self._evict()), None]

    def _process(self, side: str, batch: Batch) -> list[Batch | None]:
        if batch.num_rows == 0:
            return [None, None]
        check_scalar_keys(batch.keys, self.name)
        key_ok, ts_ok = batch.keys.is_valid(), batch.timestamps.is_valid()
        n_null_keys = batch.keys.null_count
        n_ok = int(pc.sum(pc.and_(key_ok, ts_ok)).as_py() or 0)
        if n_ok < batch.num_rows:
            self.dropped_null_keys += n_null_keys
            self.dropped_null_timestamps += batch.num_rows - n_null_keys - n_ok
            batch = batch.filter(pc.and_(key_ok, ts_ok))
            if batch.num_rows == 0:
                return [None, None]
        self.key_type = batch.keys.type
        self.schemas[side].observe(batch.data.schema)
        ts = batch.timestamps.to_numpy(zero_copy_only=False).astype(np.int64)
        prev = MIN_TIME if self.watermark is None else self.watermark
        wm = cumulative_watermark(ts, self.ooo, prev)
        self.watermark = int(wm[-1])
        reach = self.after if side == LEFT else self.before
        late = ts + reach + 1 + self.grace <= wm
        out: list[Batch] = []
        late_batch = None
        if late.any():
            self.late_records += int(late.sum())
            late_batch = batch.filter(pa.array(late))
            batch, ts = batch.filter(pa.array(~late)), ts[~late]
        if batch.num_rows:
            pairs, matched = self._join(side, batch, ts)
            if pairs is not None:
                out.append(pairs)
            self._buffer(side, batch, ts, matched)
        out += self._evict()
        return [_concat(out), late_batch]

    # -- matching --------------------------------------------------------------------------------

    def _join(self, side: str, batch: Batch, ts: np.ndarray) -> tuple[Batch | None, np.ndarray]:
        """Pairs of ``batch``'s records with the other side's buffer, and which records matched.

        Buffered entries are sorted by (key code, time rank); each record's partners are one
        contiguous range found by binary search: ``[t - lo_off, t + hi_off]`` within its key.
        """
        n = batch.num_rows
        other = RIGHT if side == LEFT else LEFT
        lo_off, hi_off = (self.before, self.after) if side == LEFT else (self.after, self.before)
        enc = pc.dictionary_encode(batch.keys)
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        store = self.buffers[other]
        index = self._index[other]
        b_code: list[int] = []
        b_time: list[int] = []
        b_ref: list[tuple[Hashable, int]] = []
        for c, key in enumerate(enc.dictionary.to_pylist()):
            for seq in index.get(key, ()):
                b_code.append(c)
                b_time.append(store.get((key, seq))[0])
                b_ref.append((key, seq))
        nb = len(b_code)
        if nb == 0:
            return None, np.zeros(n, bool)
        times = np.concatenate([np.asarray(b_time, np.int64), ts - lo_off, ts + hi_off])
        _, rank = np.unique(times, return_inverse=True)
        m = int(rank.max()) + 1
        comp = np.asarray(b_code, np.int64) * m + rank[:nb]
        order = np.argsort(comp, kind="stable")
        sorted_comp = comp[order]
        lo = np.searchsorted(sorted_comp, codes * m + rank[nb : nb + n], "left")
        hi = np.searchsorted(sorted_comp, codes * m + rank[nb + n :], "right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return None, np.zeros(n, bool)
        rec = np.repeat(np.arange(n), counts)
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        buf = order[first + np.arange(total)]
        used, inverse = np.unique(buf, return_inverse=True)
        refs = [b_ref[b] for b in used.tolist()]
        partners: list[Entry] = [store.get(ref) for ref in refs]
        if self.emit_unmatched[other]:
            for ref, (t, offset, row, matched) in zip(refs, partners, strict=True):
                if not matched:
                    store.put(ref, (t, offset, row, True))
        mine = self.schemas[side].conform(batch.data).take(pa.array(rec))
        theirs = self.schemas[other].rows_batch([p[2] for p in partners]).take(pa.array(inverse))
        left, right = (mine, theirs) if side == LEFT else (theirs, mine)
        partner_time = np.asarray([p[0] for p in partners], np.int64)[inverse]
        idx = pa.array(rec)
        pairs = Batch(
            joined_data(left, right, self.right_prefix, self.name),
            batch.keys.take(idx),
            pa.array(np.maximum(ts[rec], partner_time), pa.int64()),
            batch.offsets.take(idx),
        )
        return pairs, counts > 0

    def _buffer(self, side: str, batch: Batch, ts: np.ndarray, matched: np.ndarray) -> None:
        rows = self.schemas[side].conform(batch.data).to_pylist()
        store = self.buffers[side]
        index = self._index[side]
        due = self._due
        for key, t, offset, row, hit in zip(
            batch.keys.to_pylist(),
            ts.tolist(),
            batch.offsets.to_pylist(),
            rows,
            matched.tolist(),
            strict=True,
        ):
            self._seq += 1
            store.put((key, self._seq), (t, offset, row, hit))
            seqs = index.get(key)
            if seqs is None:
                seqs = index[key] = {}
            seqs[self._seq] = None
            heapq.heappush(due, (t, self._seq, side, key))

    # -- eviction --------------------------------------------------------------------------------

    def _evict(self) -> list[Batch]:
        """Drop the records no on-time record can match any more; unmatched rows if emitted."""
        if self.watermark is None:
            return []
        limit = self.watermark - self.before - self.after - 1 - self.grace  # evict t <= limit
        due = self._due
        evicted: list[tuple[str, Hashable, Entry]] = []
        while due and due[0][0] <= limit:
            _, seq, side, key = heapq.heappop(due)
            entry: Entry = self.buffers[side].get((key, seq))
            self.buffers[side].delete((key, seq))
            seqs = self._index[side][key]
            del seqs[seq]
            if not seqs:
                del self._index[side][key]
            if self.emit_unmatched[side] and not entry[3]:
                evicted.append((side, key, entry))
        if not evicted:
            return []
        data = joined_data(
            self.schemas[LEFT].rows_batch([e[2] if s == LEFT else None for s, _, e in evicted]),
            self.schemas[RIGHT].rows_batch([e[2] if s == RIGHT else None for s, _, e in evicted]),
            self.right_prefix,
            self.name,
        )
        return [
            Batch(
                data,
                key_array([k for _, k, _ in evicted], self.key_type),
                pa.array([e[0] for _, _, e in evicted], pa.int64()),
                pa.array([e[1] for _, _, e in evicted], pa.int64()),
            )
        ]

    # -- snapshots -------------------------------------------------------------------------------

    def state_stores(self) -> Sequence[KeyedStore]:
        return (self.buffers[LEFT], self.buffers[RIGHT])

    def snapshot(self, with_stores: bool = True) -> JoinSnapshot:
        learned = [None if s.declared is not None else s.schema for s in self.schemas.values()]
        key = None if self.key_type is None else pa.schema([pa.field("key", self.key_type)])
        return JoinSnapshot(
            type(self).__name__,
            (
                self.watermark,
                self._seq,
                self.dropped_null_keys,
                self.dropped_null_timestamps,
                self.late_records,
            ),
            (*(schema_bytes(s) for s in learned), schema_bytes(key)),
            tuple(tuple(self.buffers[s].items()) for s in (LEFT, RIGHT)) if with_stores else (),
        )

    def restore(self, state: Any, stores: StoreItems | None = None) -> None:
        snap = expect_snapshot(state, self, self.name)
        (
            self.watermark,
            self._seq,
            self.dropped_null_keys,
            self.dropped_null_timestamps,
            self.late_records,
        ) = snap.scalars
        left, right, key = (schema_from_bytes(s) for s in snap.schemas)
        for side, learned in ((LEFT, left), (RIGHT, right)):
            if learned is not None:
                self.schemas[side].schema = learned
        self.key_type = None if key is None else key.field(0).type
        self._due = []
        for i, side in enumerate((LEFT, RIGHT)):
            items = store_items(snap, stores, i)
            self.buffers[side].load(items)
            index: dict[Hashable, dict[int, None]] = {}
            for (key, seq), entry in sorted(items, key=lambda item: item[0][1]):
                index.setdefault(key, {})[seq] = None
                self._due.append((entry[0], seq, side, key))
            self._index[side] = index
        heapq.heapify(self._due)


def _concat(batches: list[Batch]) -> Batch | None:
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    return Batch(
        pa.concat_batches([b.data for b in batches]),
        pa.concat_arrays([b.keys for b in batches]),
        pa.concat_arrays([b.timestamps for b in batches]),
        pa.concat_arrays([b.offsets for b in batches]),
    )
