"""Stateless operators on Arrow batches: no broker, no Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raystream.errors import OperatorContractError
from raystream.operators.base import Batch, RecordFailure, TaskContext
from raystream.operators.stateless import (
    BranchOperator,
    FilterOperator,
    FlatMapOperator,
    MapBatchesOperator,
    MapOperator,
)


def batch(n: int = 5) -> Batch:
    return Batch.from_rows(
        [{"id": i, "amount": i * 10} for i in range(n)],
        keys=[f"k{i % 2}" for i in range(n)],
        timestamps=[1000 + i for i in range(n)],
        offsets=list(range(100, 100 + n)),
    )


def opened(op, failures: list[RecordFailure] | None = None):
    op.open(
        TaskContext(
            "app", "0_0", 0, report_failure=(failures if failures is not None else []).append
        )
    )
    return op


def test_map_replaces_values_and_keeps_key_time_offset() -> None:
    (out,) = opened(MapOperator("m", lambda r: {"id": r["id"], "double": r["amount"] * 2})).process(
        batch()
    )
    assert out.data.to_pylist()[2] == {"id": 2, "double": 40}
    assert out.keys.to_pylist() == ["k0", "k1", "k0", "k1", "k0"]
    assert out.timestamps.to_pylist() == [1000, 1001, 1002, 1003, 1004]
    assert out.offsets.to_pylist() == [100, 101, 102, 103, 104]


def test_map_failure_is_reported_and_the_rest_goes_on() -> None:
    failures: list[RecordFailure] = []
    op = opened(MapOperator("m", lambda r: {"x": 100 // r["id"]}), failures)
    (out,) = op.process(batch())
    assert out.data.column("x").to_pylist() == [100, 50, 33, 25]
    assert out.offsets.to_pylist() == [101, 102, 103, 104]
    assert len(failures) == 1
    f = failures[0]
    assert (f.operator, f.offset, f.key, f.error_class) == (
        "m",
        100,
        "k0",
        "builtins.ZeroDivisionError",
    )
    assert f.value == {"id": 0, "amount": 0}


def test_map_returning_a_non_dict_is_a_record_failure() -> None:
    failures: list[RecordFailure] = []
    (out,) = opened(MapOperator("m", lambda r: 5), failures).process(batch(2))
    assert out.num_rows == 0
    assert [f.error_class for f in failures] == ["raystream.errors.OperatorContractError"] * 2


def test_filter_keeps_truthy_and_reports_raisers() -> None:
    failures: list[RecordFailure] = []
    op = opened(FilterOperator("f", lambda r: 1 / (r["id"] - 3) > 0), failures)
    (out,) = op.process(batch())
    assert out.data.column("id").to_pylist() == [4]
    assert [f.offset for f in failures] == [103]


def test_flat_map_repeats_key_time_and_offset() -> None:
    op = opened(FlatMapOperator("fm", lambda r: [{"part": j} for j in range(r["id"] % 3)]))
    (out,) = op.process(batch())
    # ids 0..4 -> 0,1,2,0,1 copies
    assert out.data.column("part").to_pylist() == [0, 0, 1, 0]
    assert out.offsets.to_pylist() == [101, 102, 102, 104]
    assert out.keys.to_pylist() == ["k1", "k0", "k0", "k0"]


def test_map_batches_is_columnar() -> None:
    def double(rb: pa.RecordBatch) -> pa.RecordBatch:
        return rb.set_column(1, "amount", pa.compute.multiply(rb.column("amount"), 2))

    (out,) = opened(MapBatchesOperator("mb", double)).process(batch())
    assert out.data.column("amount").to_pylist() == [0, 20, 40, 60, 80]
    assert out.offsets.to_pylist() == [100, 101, 102, 103, 104]


def test_map_batches_accepts_dict_and_table() -> None:
    (a,) = opened(MapBatchesOperator("a", lambda rb: {"n": rb.column("id")})).process(batch(3))
    (b,) = opened(MapBatchesOperator("b", lambda rb: pa.Table.from_batches([rb]))).process(batch(3))
    assert a.data.to_pylist() == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert b.data.column("id").to_pylist() == [0, 1, 2]


def test_map_batches_row_count_change_breaks_the_contract() -> None:
    op = opened(MapBatchesOperator("mb", lambda rb: rb.slice(0, 1)))
    with pytest.raises(OperatorContractError, match="one row per input row"):
        op.process(batch())


def test_map_batches_that_raises_isolates_the_bad_rows() -> None:
    def strict(rb: pa.RecordBatch) -> pa.RecordBatch:
        if 3 in rb.column("id").to_pylist():
            raise ValueError("3 is not allowed")
        return rb

    failures: list[RecordFailure] = []
    (out,) = opened(MapBatchesOperator("mb", strict), failures).process(batch())
    assert out.data.column("id").to_pylist() == [0, 1, 2, 4]
    assert out.offsets.to_pylist() == [100, 101, 102, 104]
    assert [(f.offset, f.message) for f in failures] == [(103, "3 is not allowed")]


def test_branch_first_match_and_default() -> None:
    op = opened(BranchOperator("b", [lambda r: r["id"] >= 3, lambda r: r["id"] >= 1], default=True))
    big, mid, rest = op.process(batch())
    assert big is not None and mid is not None and rest is not None
    assert big.data.column("id").to_pylist() == [3, 4]
    assert mid.data.column("id").to_pylist() == [1, 2]
    assert rest.data.column("id").to_pylist() == [0]


def test_branch_without_default_drops_unmatched_and_reports_raisers() -> None:
    failures: list[RecordFailure] = []
    op = opened(BranchOperator("b", [lambda r: 10 // r["id"] > 4], default=False), failures)
    (only,) = op.process(batch())
    assert only is not None
    assert only.data.column("id").to_pylist() == [1, 2]
    assert [f.offset for f in failures] == [100]


def test_batch_rejects_misaligned_arrays() -> None:
    with pytest.raises(ValueError, match="misaligned"):
        Batch(
            pa.RecordBatch.from_pydict({"a": [1, 2]}),
            pa.array(["x"]),
            pa.array([1, 2], pa.int64()),
            pa.array([1, 2], pa.int64()),
        )
