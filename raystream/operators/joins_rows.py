"""The Arrow rows of a table's entries, kept between lookups so each entry is converted once.

A lookup join takes, for every stream record, its key's row out of the table. Building those rows
from the stored dicts (``RecordBatch.from_pylist``) on every batch cost more than the rest of the
lookup together; a table changes far less often than it is read. :class:`RowCache` keeps the rows it
built in Arrow chunks and a ``key -> (row number, entry)`` map. A cached row serves a key only while
the store still holds *the same entry object* for it: the table writes a new tuple on every change,
and a restored store holds new ones, so no write path has to tell the cache anything.

Rows of replaced or deleted entries stay behind as garbage; the cache starts afresh when they would
outnumber the live ones, and whenever the table's schema has changed. The price is memory: the
rows of the entries looked up, as Arrow, beside their dicts (at most twice the table's size).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

#: Chunks are merged into one when there are more than this many (a take over many chunks is
#: slower than over one, and new entries arrive as small chunks).
_MAX_CHUNKS = 8
#: Rows kept beyond twice the live entries before the cache starts afresh.
_SLACK_ROWS = 4096


class RowCache:
    """Arrow rows for a table's entries (see the module doc)."""

    def __init__(self) -> None:
        self._schema: pa.Schema | None = None
        self._chunks: list[pa.RecordBatch] = []
        self._merged: pa.Table | None = None
        self._rows = 0
        self._slots: dict[Hashable, tuple[int, Any]] = {}

    def __len__(self) -> int:
        """Rows held, garbage included."""
        return self._rows

    def slots(
        self,
        keys: Sequence[Hashable],
        entries: Sequence[Any],
        build: Callable[[list[Any]], pa.RecordBatch],
        schema: pa.Schema,
        live: int,
    ) -> np.ndarray:
        """The row number of every distinct key's current entry (-1 where its entry is None).

        ``build`` turns entries into a batch of ``schema``, one row each; it is called once,
        for the entries not cached yet. ``live`` is the table's size, to bound garbage.
        """
        if schema != self._schema or self._rows > 2 * live + _SLACK_ROWS:
            self._reset(schema)
        slots = self._slots
        cached = list(map(slots.get, keys))
        out = [
            -1 if e is None else c[0] if c is not None and c[1] is e else -2
            for e, c in zip(entries, cached, strict=True)
        ]
        if -2 in out:
            fresh: list[Any] = []
            for i, at in enumerate(out):
                if at == -2:
                    out[i] = self._rows + len(fresh)
                    slots[keys[i]] = (out[i], entries[i])
                    fresh.append(entries[i])
            self._append(build(fresh))
        return np.asarray(out, np.int64)

    def take(self, rows: pa.Array) -> pa.RecordBatch:
        """The cached rows at ``rows`` (a null index gives an all-null row), as one batch."""
        if self._merged is None:
            self._merged = pa.Table.from_batches(self._chunks, schema=self._schema)
            if len(self._chunks) > _MAX_CHUNKS:
                self._merged = self._merged.combine_chunks()
                self._chunks = self._merged.to_batches()
        taken = self._merged.take(rows).combine_chunks()
        batches = taken.to_batches()
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=self._schema)
        return batches[0]  # combine_chunks leaves one chunk per column

    def _append(self, batch: pa.RecordBatch) -> None:
        self._chunks.append(batch)
        self._rows += batch.num_rows
        self._merged = None

    def _reset(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._chunks = []
        self._merged = None
        self._rows = 0
        self._slots = {}
