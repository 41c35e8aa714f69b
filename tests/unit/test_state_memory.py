"""The in-memory keyed store: content, change tracking and size estimate."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest

from raystream.state.base import KeyedStore
from raystream.state.memory import _SIZE_DEPTH, MemoryStore, _size


def test_get_put_delete_items_len() -> None:
    s: KeyedStore = MemoryStore()
    assert s.get("a") is None and s.get("a", 0) == 0 and len(s) == 0
    s.put("a", 1)
    s.put(("k", 5), (1, 2))
    s.put("a", 2)
    assert s.get("a") == 2 and "a" in s and ("k", 5) in s
    assert list(s.items()) == [("a", 2), (("k", 5), (1, 2))]
    assert list(s.keys()) == ["a", ("k", 5)]
    s.delete("a")
    s.delete("missing")
    assert len(s) == 1 and "a" not in s


def test_dirty_keys_track_changes_since_mark_clean() -> None:
    s = MemoryStore()
    s.put("a", 1)
    s.put("b", 1)
    assert s.dirty_keys() == {"a", "b"}
    s.mark_clean()
    assert s.dirty_keys() == frozenset()
    s.put("b", 2)
    s.delete("a")
    s.delete("never")  # deleting an absent key changes nothing
    assert s.dirty_keys() == {"a", "b"}


def test_load_replaces_content_and_is_clean() -> None:
    s = MemoryStore()
    s.put("old", 1)
    s.load([("x", 1), ("y", 2)])
    assert dict(s.items()) == {"x": 1, "y": 2}
    assert s.dirty_keys() == frozenset()


def test_items_may_be_iterated_while_deleting() -> None:
    s = MemoryStore()
    for i in range(5):
        s.put(i, i)
    for k, _ in s.items():
        s.delete(k)
    assert len(s) == 0


def test_approx_bytes_grows_with_content_and_counts_arrow_buffers() -> None:
    s = MemoryStore()
    empty = s.approx_bytes()
    s.put("k", tuple(range(100)))
    small = s.approx_bytes()
    s.put("t", pa.table({"x": list(range(100_000))}))
    assert empty < small < s.approx_bytes()
    assert s.approx_bytes() - small >= 800_000  # 100k int64 values
    s.delete("t")
    assert s.approx_bytes() == small


def test_approx_bytes_of_a_large_store_is_estimated_from_a_sample() -> None:
    s = MemoryStore()
    for i in range(50_000):
        s.put(i, ("x" * (i % 200), i))
    exact = sys.getsizeof(s._data) + sum(
        _size(k, _SIZE_DEPTH) + _size(v, _SIZE_DEPTH) for k, v in s.items()
    )
    assert abs(s.approx_bytes() - exact) / exact < 0.05


def test_a_large_store_is_sampled_again_once_it_has_grown_by_a_quarter() -> None:
    s = MemoryStore()
    for i in range(10_000):
        s.put(i, "x" * 10)

    def entries_part() -> int:  # the estimate without the dict's own table
        return s.approx_bytes() - sys.getsizeof(s._data)

    small_entries = entries_part()
    for i in range(10_000, 11_000):  # 10% more of much larger entries: not sampled again...
        s.put(i, "x" * 10_000)
    assert entries_part() == pytest.approx(small_entries * 1.1, rel=0.01)  # ...only scaled
    for i in range(11_000, 20_000):  # now twice the size: sampled again, large entries seen
        s.put(i, "x" * 10_000)
    exact = sys.getsizeof(s._data) + sum(
        _size(k, _SIZE_DEPTH) + _size(v, _SIZE_DEPTH) for k, v in s.items()
    )
    assert abs(s.approx_bytes() - exact) / exact < 0.15
