"""A lookup join's cached Arrow rows always answer the table as it is now."""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa
import pytest

from raystream.operators import joins_rows
from raystream.operators.joins_table import StreamTableJoinSpec
from tests.unit.test_joins_examples import changelog, rows, stream


def _counting_builds(op: Any) -> list[int]:
    """Wrap the table's row builder; the list gets the size of every build."""
    sizes: list[int] = []
    schema = op.table.schema
    build = schema.rows_batch

    def counted(batch_rows: Any) -> pa.RecordBatch:
        sizes.append(len(batch_rows))
        return build(batch_rows)

    schema.rows_batch = counted
    return sizes


def test_each_table_entry_is_built_once_and_rebuilt_only_after_it_changed() -> None:
    op = StreamTableJoinSpec(how="left").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann"}), ("c2", {"name": "Bob"})))
    builds = _counting_builds(op)
    for _ in range(3):
        (out,) = op.process_left(stream(("c1", {"a": 1}), ("c2", {"a": 2}), ("c1", {"a": 3})))
        assert rows(out) == [
            {"a": 1, "name": "Ann"},
            {"a": 2, "name": "Bob"},
            {"a": 3, "name": "Ann"},
        ]
    assert builds == [2]  # the first lookup built both rows; the others took them from the cache
    op.process_right(changelog(("c1", {"name": "Ada"}), ("c2", None)))
    (out,) = op.process_left(stream(("c2", {"a": 4}), ("c1", {"a": 5})))
    assert rows(out) == [{"a": 4, "name": None}, {"a": 5, "name": "Ada"}]
    assert builds == [2, 1]  # only the changed entry; the deleted one needs no row
    op.process_right(changelog(("c2", {"name": "Bea"})))
    (out,) = op.process_left(stream(("c2", {"a": 6})))
    assert rows(out) == [{"a": 6, "name": "Bea"}]


def test_a_widened_schema_starts_the_rows_afresh() -> None:
    op = StreamTableJoinSpec(how="left").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann"})))
    (out,) = op.process_left(stream(("c1", {"a": 1})))
    assert rows(out) == [{"a": 1, "name": "Ann"}]
    op.process_right(changelog(("c2", {"name": "Bob", "tier": "gold"})))
    (out,) = op.process_left(stream(("c1", {"a": 2}), ("c2", {"a": 3})))
    assert rows(out) == [
        {"a": 2, "name": "Ann", "tier": None},
        {"a": 3, "name": "Bob", "tier": "gold"},
    ]


def test_a_restored_table_answers_from_its_own_entries() -> None:
    op = StreamTableJoinSpec(how="left").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann"})))
    state = pickle.loads(pickle.dumps(op.snapshot()))
    op.process_right(changelog(("c1", {"name": "Ada"})))
    (out,) = op.process_left(stream(("c1", {"a": 1})))  # caches Ada's row
    assert rows(out) == [{"a": 1, "name": "Ada"}]
    op.restore(state)  # back to Ann, in the same operator and its cache
    (out,) = op.process_left(stream(("c1", {"a": 2})))
    assert rows(out) == [{"a": 2, "name": "Ann"}]


def test_rows_of_replaced_entries_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joins_rows, "_SLACK_ROWS", 10)
    op = StreamTableJoinSpec(how="left").build("enrich")
    for i in range(200):
        op.process_right(changelog(("c1", {"n": i}), ("c2", {"n": -i})))
        (out,) = op.process_left(stream(("c2", {"a": 0}), ("c1", {"a": 1})))
        assert rows(out) == [{"a": 0, "n": -i}, {"a": 1, "n": i}]
        assert len(op.table._rows) <= 2 * 2 + 10 + 2


def test_many_small_chunks_are_merged() -> None:
    op = StreamTableJoinSpec(how="left").build("enrich")
    for i in range(30):  # a new key every call: a new chunk every call
        op.process_right(changelog((f"c{i}", {"n": i})))
        (out,) = op.process_left(stream(*((f"c{j}", {"a": j}) for j in range(i + 1))))
        assert rows(out) == [{"a": j, "n": j} for j in range(i + 1)]
        assert len(op.table._rows._chunks) <= joins_rows._MAX_CHUNKS + 1


def test_a_table_without_value_columns_still_tells_matches() -> None:
    op = StreamTableJoinSpec(how="inner").build("enrich")
    op.process_right(changelog(("c1", {})))
    (out,) = op.process_left(stream(("c1", {"a": 1}), ("c9", {"a": 2})))
    assert out is not None and out.keys.to_pylist() == ["c1"]
    assert rows(out) == [{"a": 1}]
