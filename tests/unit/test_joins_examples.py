"""Example-based tests of the table joins: semantics a reader can check by hand."""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa
import pytest

from raystream.errors import BinaryInputError, OperatorContractError, TopologyError
from raystream.operators.base import Batch, RecordFailure, TaskContext
from raystream.operators.joins_table import (
    GlobalTableJoinSpec,
    StreamTableJoinSpec,
    TableSpec,
)
from raystream.operators.joins_table_table import TableTableJoinSpec
from raystream.operators.joins_versioned import VersionedTableJoinSpec

CUSTOMER = pa.schema([("name", pa.string()), ("tier", pa.string())])


def stream(*recs: tuple[Any, dict[str, Any]], ts: list[int] | None = None, first: int = 0) -> Batch:
    return Batch.from_rows(
        [r for _, r in recs],
        keys=[k for k, _ in recs],
        timestamps=ts,
        offsets=list(range(first, first + len(recs))),
    )


def changelog(*recs: tuple[Any, dict[str, Any] | None], ts: list[int] | None = None) -> Batch:
    """Upserts (dict) and tombstones (None), all columns on every row."""
    names = list(dict.fromkeys(n for _, r in recs if r is not None for n in r))
    rows = [{**{n: (r or {}).get(n) for n in names}, "__tombstone": r is None} for _, r in recs]
    return Batch.from_rows(rows, keys=[k for k, _ in recs], timestamps=ts)


def rows(batch: Batch | None) -> list[dict[str, Any]]:
    return [] if batch is None else batch.data.to_pylist()


# -- contract ----------------------------------------------------------------------------------


def test_a_join_refuses_the_one_input_entry_point() -> None:
    op = StreamTableJoinSpec().build("j")
    with pytest.raises(BinaryInputError, match="process_left"):
        op.process(stream(("c1", {"amount": 1})))
    with pytest.raises(BinaryInputError, match="side must be"):
        op.process_side("middle", stream(("c1", {"amount": 1})))


def test_restore_refuses_another_operators_snapshot() -> None:
    state = TableSpec().build("t").snapshot()
    with pytest.raises(TopologyError, match="cannot restore a StreamTableJoinOperator"):
        StreamTableJoinSpec().build("j").restore(state)


def test_nested_keys_are_refused() -> None:
    op = StreamTableJoinSpec().build("j")
    with pytest.raises(TopologyError, match=r"j: cannot join on a list<.*> key; re-key both"):
        op.process_left(stream(([1, 2], {"amount": 1})))


# -- materialiser ------------------------------------------------------------------------------


def test_table_keeps_the_latest_value_and_emits_its_changes() -> None:
    op = TableSpec(value_schema=CUSTOMER).build("customers")
    (out,) = op.process(
        changelog(
            ("c1", {"name": "Ann", "tier": "gold"}),
            ("c2", {"name": "Bob", "tier": "silver"}),
            ("c1", {"name": "Ann", "tier": "platinum"}),
            ("c2", None),
            ("c3", None),  # deletes nothing: not emitted
            (None, {"name": "?", "tier": "?"}),  # null key: dropped
        )
    )
    assert out is not None
    assert out.keys.to_pylist() == ["c1", "c2", "c1", "c2"]
    assert rows(out) == [
        {"name": "Ann", "tier": "gold", "__tombstone": False},
        {"name": "Bob", "tier": "silver", "__tombstone": False},
        {"name": "Ann", "tier": "platinum", "__tombstone": False},
        {"name": None, "tier": None, "__tombstone": True},
    ]
    assert op.get("c1") == {"name": "Ann", "tier": "platinum"}
    assert op.get("c2") is None and len(op) == 1
    assert op.state.dropped_null_keys == 1
    assert op.to_arrow().to_pylist() == [{"key": "c1", "name": "Ann", "tier": "platinum"}]
    assert op.state.store.dirty_keys() == {"c1", "c2"}


def test_a_tombstone_column_must_be_bool() -> None:
    op = TableSpec().build("t")
    with pytest.raises(OperatorContractError, match="must be bool"):
        op.process(Batch.from_rows([{"v": 1, "__tombstone": 1}], keys=["k"]))


# -- stream-table ------------------------------------------------------------------------------


def test_stream_records_see_the_table_as_of_their_call() -> None:
    op = StreamTableJoinSpec(how="left", right_schema=CUSTOMER).build("enrich")
    (out,) = op.process_left(stream(("c1", {"amount": 10})))
    assert rows(out) == [{"amount": 10, "name": None, "tier": None}]  # no profile yet
    assert op.process_right(changelog(("c1", {"name": "Ann", "tier": "gold"}))) == [None]
    (out,) = op.process_left(stream(("c1", {"amount": 11}), ("c2", {"amount": 12}), first=1))
    assert rows(out) == [
        {"amount": 11, "name": "Ann", "tier": "gold"},
        {"amount": 12, "name": None, "tier": None},
    ]
    assert out is not None and out.offsets.to_pylist() == [1, 2]  # the stream's records
    op.process_right(changelog(("c1", None)))
    (out,) = op.process_left(stream(("c1", {"amount": 13})))
    assert rows(out) == [{"amount": 13, "name": None, "tier": None}]


def test_inner_join_drops_records_without_a_match_and_null_keys() -> None:
    op = StreamTableJoinSpec(how="inner").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann"}), ("c2", {"name": "Bob"})))
    (out,) = op.process_left(
        stream(("c2", {"amount": 1}), ("c9", {"amount": 2}), (None, {"amount": 3}), ("c1", {}))
    )
    assert out is not None
    assert out.keys.to_pylist() == ["c2", "c1"]
    assert rows(out) == [{"amount": 1, "name": "Bob"}, {"amount": None, "name": "Ann"}]
    assert op.unmatched_null_keys == 1
    assert op.process_left(stream(("c9", {"amount": 4}))) == [None]


def test_clashing_table_columns_get_the_prefix() -> None:
    op = StreamTableJoinSpec(right_prefix="customer_").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann", "ts": 5})))
    (out,) = op.process_left(stream(("c1", {"ts": 1, "amount": 9})))
    assert rows(out) == [{"ts": 1, "amount": 9, "customer_ts": 5, "name": "Ann"}]
    op.process_right(changelog(("c1", {"ts": 6})))
    with pytest.raises(OperatorContractError, match="customer_ts"):
        op.process_left(stream(("c1", {"ts": 1, "customer_ts": 0})))


def test_a_learned_table_schema_widens_and_survives_a_snapshot() -> None:
    op = StreamTableJoinSpec(how="left").build("enrich")
    op.process_right(changelog(("c1", {"name": "Ann"})))
    op.process_right(changelog(("c2", {"name": "Bob", "tier": "gold"})))
    state = pickle.loads(pickle.dumps(op.snapshot()))
    op = StreamTableJoinSpec(how="left").build("enrich")
    op.restore(state)
    (out,) = op.process_left(stream(("c1", {"a": 1}), ("c2", {"a": 2}), ("c3", {"a": 3})))
    assert rows(out) == [
        {"a": 1, "name": "Ann", "tier": None},
        {"a": 2, "name": "Bob", "tier": "gold"},
        {"a": 3, "name": None, "tier": None},
    ]
    with pytest.raises(OperatorContractError, match="changed type"):
        op.process_right(changelog(("c3", {"name": 5})))


# -- global table ------------------------------------------------------------------------------


def test_global_table_looks_up_a_field_of_the_record() -> None:
    op = GlobalTableJoinSpec(on="merchant_id", how="left").build("merchants")
    op.process_right(changelog(("m1", {"merchant": "Shop"}), ("m2", {"merchant": "Cafe"})))
    (out,) = op.process_left(
        stream(
            ("c1", {"merchant_id": "m2", "amount": 5}),
            ("c2", {"merchant_id": None, "amount": 6}),
            ("c1", {"merchant_id": "m1", "amount": 7}),
        )
    )
    assert out is not None
    assert out.keys.to_pylist() == ["c1", "c2", "c1"]  # the stream's keys are kept
    assert [r["merchant"] for r in rows(out)] == ["Cafe", None, "Shop"]
    with pytest.raises(OperatorContractError, match="no field 'merchant_id'"):
        op.process_left(stream(("c1", {"amount": 1})))


def test_global_table_key_function_failures_are_reported_not_fatal() -> None:
    failures: list[RecordFailure] = []
    op = GlobalTableJoinSpec(on=lambda row: row["m"].upper()).build("merchants")
    op.open(TaskContext("app", "t0", 0, report_failure=failures.append))
    op.process_right(changelog(("M1", {"merchant": "Shop"})))
    (out,) = op.process_left(stream(("c1", {"m": "m1"}), ("c2", {"m": None}), first=40))
    assert rows(out) == [{"m": "m1", "merchant": "Shop"}]
    assert [(f.offset, f.key, f.error_class) for f in failures] == [
        (41, "c2", "builtins.AttributeError")
    ]


# -- versioned ---------------------------------------------------------------------------------


def test_versioned_join_uses_the_value_valid_at_the_records_time() -> None:
    op = VersionedTableJoinSpec.of("1h", how="left").build("asof")
    op.process_right(
        changelog(
            ("c1", {"tier": "silver"}),
            ("c1", {"tier": "platinum"}),
            ("c1", {"tier": "gold"}),  # out of order: valid from 20 until 30
            ("c1", None),  # tombstone: nothing valid from 40
            ts=[10, 30, 20, 40],
        )
    )
    assert [v[0] for v in op.versions("c1")] == [10, 20, 30, 40]
    (out,) = op.process_left(
        stream(
            *[("c1", {"t": t}) for t in (5, 10, 25, 30, 39, 40, 99)], ts=[5, 10, 25, 30, 39, 40, 99]
        )
    )
    assert [r["tier"] for r in rows(out)] == [
        None,
        "silver",
        "gold",
        "platinum",
        "platinum",
        None,
        None,
    ]
    assert out is not None and out.timestamps.to_pylist() == [5, 10, 25, 30, 39, 40, 99]


def test_versioned_history_is_bounded_by_retention() -> None:
    op = VersionedTableJoinSpec(history_retention_ms=10).build("asof")
    op.process_right(
        changelog(
            ("a", {"v": 1}),
            ("a", {"v": 2}),
            ("b", {"v": 3}),
            ("c", {"v": 4}),
            ("c", None),
            ts=[0, 5, 6, 7, 8],
        )
    )
    assert len(op.versions("a")) == 2 and len(op.versions("c")) == 2
    op.process_right(changelog(("d", {"v": 5}), ts=[100]))  # horizon 90
    assert op.versions("a") == ((5, {"v": 2}),)  # the latest version is kept, however old
    assert op.versions("b") == ((6, {"v": 3}),)
    assert op.versions("c") == ()  # deleted: nothing left to find
    assert len(op.store) == 3
    op.process_right(changelog(("a", {"v": 6}), ts=[89]))  # older than the horizon: dropped
    assert op.expired_updates == 1 and op.versions("a") == ((5, {"v": 2}),)
    (out,) = op.process_left(stream(("a", {"x": 1}), ("a", {"x": 2}), ts=[89, 90]))
    assert rows(out) == [{"x": 2, "v": 2}]  # ts 89 < horizon: too old to look up
    assert op.too_old_lookups == 1


# -- table-table -------------------------------------------------------------------------------


def test_inner_table_table_join_emits_rows_and_deletions() -> None:
    op = TableTableJoinSpec("inner").build("tt")
    assert op.process_left(changelog(("o1", {"item": "pen"}), ts=[5])) == [None]
    (out,) = op.process_right(changelog(("o1", {"paid": True}), ts=[3]))
    assert rows(out) == [{"item": "pen", "paid": True, "__tombstone": False}]
    assert out is not None and out.timestamps.to_pylist() == [5]  # max of both sides
    (out,) = op.process_left(changelog(("o1", {"item": "ink"}), ("o1", None), ts=[6, 7]))
    assert rows(out) == [
        {"item": "ink", "paid": True, "__tombstone": False},
        {"item": None, "paid": None, "__tombstone": True},
    ]
    assert out is not None and out.timestamps.to_pylist() == [6, 7]
    assert op.process_right(changelog(("o1", None))) == [None]  # no joined row to delete
    assert op.sizes() == (0, 0)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("left", [("pen", True, False), (None, None, True)]),
        (
            "outer",
            [(None, True, False), ("pen", True, False), (None, True, False), (None, None, True)],
        ),
    ],
)
def test_left_and_outer_table_table_joins(how: str, expected: list[Any]) -> None:
    op = TableTableJoinSpec(
        how,
        left_schema=pa.schema([("item", pa.string())]),
        right_schema=pa.schema([("paid", pa.bool_())]),
    ).build("tt")
    got = []
    for side, batch in [
        ("right", changelog(("o1", {"paid": True}))),
        ("left", changelog(("o1", {"item": "pen"}))),
        ("left", changelog(("o1", None))),
        ("right", changelog(("o1", None))),
    ]:
        (out,) = op.process_side(side, batch)
        got += [(r["item"], r["paid"], r["__tombstone"]) for r in rows(out)]
    assert got == expected
