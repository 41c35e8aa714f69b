"""An in-memory :class:`~raystream.state.base.KeyedStore` backed by a dict.

This is the working copy a worker keeps for each of its tasks; durability comes from the epoch
checkpoints, which read :meth:`MemoryStore.dirty_keys` to write only what changed.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Hashable, Iterable, Iterator
from itertools import islice
from typing import Any

from raystream.state.base import KeyedStore

#: How deep :meth:`MemoryStore.approx_bytes` looks into containers; deeper parts are not counted.
_SIZE_DEPTH = 4
#: Stores with more keys than this are sized from a random sample of this many entries.
_SIZE_SAMPLE = 500


class MemoryStore(KeyedStore):
    """A dict with a dirty-key set."""

    def __init__(self) -> None:
        self._data: dict[Hashable, Any] = {}
        self._dirty: set[Hashable] = set()
        #: (store size when sampled, bytes per entry then) of the last large-store estimate.
        self._per_entry: tuple[int, float] | None = None

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._data.get(key, default)

    def get_many(self, keys: Iterable[Hashable]) -> list[Any]:
        return list(map(self._data.get, keys))

    def put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._dirty.add(key)

    def delete(self, key: Hashable) -> None:
        if key in self._data:
            del self._data[key]
            self._dirty.add(key)

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        return iter(list(self._data.items()))

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def dirty_keys(self) -> frozenset[Hashable]:
        return frozenset(self._dirty)

    def mark_clean(self) -> None:
        self._dirty.clear()

    def load(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        self._data = dict(items)
        self._dirty.clear()
        self._per_entry = None  # new content: size it afresh

    def approx_bytes(self) -> int:
        n = len(self._data)
        if n <= _SIZE_SAMPLE:
            exact = sum(
                _size(k, _SIZE_DEPTH) + _size(v, _SIZE_DEPTH) for k, v in self._data.items()
            )
            return sys.getsizeof(self._data) + exact
        # Sizing a million entries every few seconds would cost more than the metric is worth:
        # sample, and sample again only once the store has grown or shrunk by a quarter.
        if self._per_entry is None or not 0.8 < n / self._per_entry[0] < 1.25:
            step = n // _SIZE_SAMPLE
            start = random.Random(n).randrange(step)
            entries = islice(self._data.items(), start, None, step)  # no copy of the store
            sampled = [_size(k, _SIZE_DEPTH) + _size(v, _SIZE_DEPTH) for k, v in entries]
            self._per_entry = (n, sum(sampled) / len(sampled))
        return sys.getsizeof(self._data) + int(n * self._per_entry[1])


def _size(obj: Any, depth: int) -> int:
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(obj, type):
        return nbytes  # Arrow tables/arrays and numpy arrays know their buffer size
    size = sys.getsizeof(obj)
    if depth <= 0:
        return size
    if isinstance(obj, dict):
        return size + sum(_size(k, depth - 1) + _size(v, depth - 1) for k, v in obj.items())
    if isinstance(obj, tuple | list | set | frozenset):
        return size + sum(_size(v, depth - 1) for v in obj)
    return size
