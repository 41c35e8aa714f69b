"""The ``__state`` file of a task epoch: whole stores in chunks, deltas, metadata, in order."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from raystream._runtime import checkpointing as ck
from raystream.state.memory import MemoryStore


def _epoch(store: MemoryStore, full: bool, meta: Any) -> Any:
    rows = ck._Rows()
    rows.add(ck._meta_key("op"), pickle.dumps(meta))
    rows.add_store(b"op.0" + ck._SEP, store, full)
    store.mark_clean()
    return rows.table()


def test_a_full_epoch_in_chunks_then_deltas_restore_the_last_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ck, "_CHUNK_ITEMS", 3)
    s = MemoryStore()
    for i in range(10):
        s.put(("k", i), {"n": i})
    files = [_epoch(s, True, "m0")]
    assert files[0].num_rows == 1 + 4  # the metadata row and ceil(10 / 3) chunks
    s.delete(("k", 3))
    s.put(("k", 4), {"n": 40})
    s.put(("k", 10), {"n": 10})
    files.append(_epoch(s, False, "m1"))
    s.put(("k", 3), {"n": 30})  # back after its deletion
    s.delete(("k", 10))
    files.append(_epoch(s, False, "m2"))
    meta: dict[Any, Any] = {}
    stores: dict[str, dict[Any, Any]] = {}
    for table in files:
        ck._apply(table, meta, stores)
    assert meta == {"op": "m2"}
    assert stores == {"op.0": dict(s.items())}


def test_a_value_that_refers_to_itself_is_still_written() -> None:
    loop: list[Any] = []
    loop.append(loop)
    s = MemoryStore()
    s.put("a", loop)
    meta: dict[Any, Any] = {}
    stores: dict[str, dict[Any, Any]] = {}
    ck._apply(_epoch(s, True, None), meta, stores)
    got = stores["op.0"]["a"]
    assert got[0] is got


def test_a_delta_is_one_chunk_and_one_row_of_removed_keys() -> None:
    s = MemoryStore()
    for i in range(5):
        s.put(i, i)
    _epoch(s, True, None)
    s.put(1, 10)
    s.put(7, 70)
    s.delete(2)
    s.delete(3)
    keys = _epoch(s, False, None).column("__key").to_pylist()
    assert sorted(keys) == sorted([ck._meta_key("op"), b"op.0|*0", b"op.0|-"])


def test_deltas_written_one_row_a_key_still_restore() -> None:
    s = MemoryStore()
    s.put("a", 1)
    s.put("b", 2)
    meta: dict[Any, Any] = {}
    stores: dict[str, dict[Any, Any]] = {}
    ck._apply(_epoch(s, True, None), meta, stores)
    # The layout of earlier releases: one row per changed key, a tombstone per removed one.
    old = ck._table(
        [b"op.0|" + pickle.dumps("a"), b"op.0|" + pickle.dumps("c")],
        [True, False],
        [None, pickle.dumps(3)],
    )
    ck._apply(old, meta, stores)
    assert stores == {"op.0": {"b": 2, "c": 3}}
