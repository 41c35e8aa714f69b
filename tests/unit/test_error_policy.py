"""``on_error=`` policies of operators with user functions: dead-letter, retry, fail."""

from __future__ import annotations

import pyarrow as pa
import pytest

import raystream as rs
from raystream.errors import TopologyError, UserFunctionError
from raystream.operators.base import Batch, ErrorPolicy, RecordFailure, TaskContext
from raystream.operators.process import ProcessSpec
from raystream.operators.stateless import (
    BranchOperator,
    FilterOperator,
    FlatMapOperator,
    MapBatchesOperator,
    MapOperator,
)
from raystream.testing import TopologyTestDriver


class Flaky:
    """Raises on the first ``fails`` calls for each id in ``bad``, then returns ``result(row)``."""

    def __init__(self, bad: set[int], fails: int, result=lambda r: {**r, "ok": True}) -> None:
        self.bad, self.fails, self.result = bad, fails, result
        self.calls: dict[int, int] = {}

    def __call__(self, row):
        i = row["id"]
        self.calls[i] = self.calls.get(i, 0) + 1
        if i in self.bad and self.calls[i] <= self.fails:
            raise ValueError(f"flaky {i}")
        return self.result(row)


def batch(n: int = 4) -> Batch:
    return Batch.from_rows(
        [{"id": i} for i in range(n)],
        keys=[f"k{i}" for i in range(n)],
        timestamps=[1000 + i for i in range(n)],
        offsets=list(range(10, 10 + n)),
    )


def opened(op, failures: list[RecordFailure], sleeps: list[float]):
    op.open(TaskContext("app", "0_0", 0, report_failure=failures.append, sleep=sleeps.append))
    return op


def test_policy_parsing_and_bad_values_name_the_setting() -> None:
    assert ErrorPolicy.of(None) == ErrorPolicy("dead_letter")
    assert ErrorPolicy.of("retry:5") == ErrorPolicy("retry", retries=5)
    assert ErrorPolicy.of("fail").action == "fail"
    with pytest.raises(TopologyError, match="on_error: 'explode'"):
        ErrorPolicy.of("explode")
    with pytest.raises(TopologyError, match="retry:N"):
        ErrorPolicy.of("retry:x")
    with pytest.raises(TopologyError, match="max_backoff_ms"):
        ErrorPolicy("retry", backoff_ms=100, max_backoff_ms=10)


def test_retry_succeeds_after_backoff_and_nothing_is_dead_lettered() -> None:
    failures: list[RecordFailure] = []
    sleeps: list[float] = []
    fn = Flaky({1, 3}, fails=2)
    op = opened(
        MapOperator("m", fn, ErrorPolicy("retry", retries=2, backoff_ms=50)), failures, sleeps
    )
    (out,) = op.process(batch())
    assert out.data.column("ok").to_pylist() == [True] * 4
    assert out.offsets.to_pylist() == [10, 11, 12, 13]
    assert failures == []
    assert fn.calls == {0: 1, 1: 3, 2: 1, 3: 3}
    assert sleeps == [0.05, 0.1, 0.05, 0.1]  # doubled per record, reset for the next


def test_retry_exhausted_dead_letters_with_capped_backoff() -> None:
    failures: list[RecordFailure] = []
    sleeps: list[float] = []
    fn = Flaky({2}, fails=100)
    policy = ErrorPolicy("retry", retries=4, backoff_ms=100, max_backoff_ms=300)
    (out,) = opened(MapOperator("m", fn, policy), failures, sleeps).process(batch())
    assert out.data.column("id").to_pylist() == [0, 1, 3]
    assert fn.calls[2] == 5
    assert sleeps == [0.1, 0.2, 0.3, 0.3]
    assert [(f.operator, f.offset, f.error_class) for f in failures] == [
        ("m", 12, "builtins.ValueError")
    ]


def test_dead_letter_is_the_default_and_does_not_retry() -> None:
    failures: list[RecordFailure] = []
    sleeps: list[float] = []
    fn = Flaky({0}, fails=1)
    (out,) = opened(MapOperator("m", fn), failures, sleeps).process(batch())
    assert out.num_rows == 3 and fn.calls[0] == 1 and sleeps == []
    assert [f.offset for f in failures] == [10]


@pytest.mark.parametrize(
    ("make", "batch_calls"),
    [
        (lambda fn, p: MapOperator("op", fn, p), 0),
        (lambda fn, p: FilterOperator("op", fn, p), 0),
        (lambda fn, p: FlatMapOperator("op", lambda r: [fn(r)], p), 0),
        (lambda fn, p: BranchOperator("op", [fn], True, p), 0),
        # map_batches first calls the function on the whole batch, then record by record.
        (
            lambda fn, p: MapBatchesOperator(
                "op", lambda b: pa.RecordBatch.from_pylist([fn(r) for r in b.to_pylist()]), p
            ),
            1,
        ),
    ],
    ids=["map", "filter", "flat_map", "branch", "map_batches"],
)
def test_every_row_operator_honours_fail_and_retry(make, batch_calls: int) -> None:
    failures: list[RecordFailure] = []
    sleeps: list[float] = []
    fails = 1 + batch_calls
    with pytest.raises(UserFunctionError, match=r"operator 'op'.*'fail'.*ValueError: flaky 1"):
        opened(make(Flaky({1}, fails), ErrorPolicy("fail")), failures, sleeps).process(batch())
    assert failures == []

    fn = Flaky({1}, fails)
    opened(make(fn, ErrorPolicy("retry", retries=1, backoff_ms=7)), failures, sleeps).process(
        batch()
    )
    assert failures == [] and 0.007 in sleeps and fn.calls[1] >= 2

    fn = Flaky({1}, fails=10)
    opened(make(fn, ErrorPolicy("retry", retries=2, backoff_ms=0)), failures, sleeps).process(
        batch()
    )
    assert [f.offset for f in failures] == [11]


def test_process_retry_starts_each_attempt_from_the_unchanged_key_state() -> None:
    calls = {"n": 0}

    def fn(ctx, key, value):
        ctx.state["n"] = ctx.state.get("n", 0) + 1  # changed before raising: must not stick
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient")
        ctx.emit({"id": value["id"], "n": ctx.state["n"]})

    sleeps: list[float] = []
    failures: list[RecordFailure] = []
    op = ProcessSpec.of(fn, on_error="retry:1").build("proc")
    op.open(TaskContext("app", "0_0", 0, report_failure=failures.append, sleep=sleeps.append))
    (out,) = op.process(batch(1))
    assert out is not None and out.data.to_pylist() == [{"id": 0, "n": 1}]
    assert op.key_state("k0") == {"n": 1}
    assert failures == [] and sleeps == [0.1]


def test_process_fail_policy_stops_and_dead_letter_leaves_state_alone() -> None:
    def fn(ctx, key, value):
        ctx.state["seen"] = True
        raise KeyError("missing field")

    op = ProcessSpec.of(fn, on_error="fail").build("proc")
    op.open(TaskContext("app", "0_0", 0))
    with pytest.raises(UserFunctionError, match="'proc'"):
        op.process(batch(1))

    failures: list[RecordFailure] = []
    op = ProcessSpec.of(fn).build("proc")
    op.open(TaskContext("app", "0_0", 0, report_failure=failures.append))
    op.process(batch(2))
    assert [f.offset for f in failures] == [10, 11]
    assert op.key_state("k0") == {}


def test_the_stream_api_takes_on_error_and_the_test_driver_applies_it() -> None:
    app = rs.App("policy", brokers="unused:9092")
    src = app.stream("in")
    src.map(lambda r: {"x": 10 // r["d"]}, on_error="dead_letter", name="divide").to("out")
    src.filter(lambda r: 1 // r["d"] >= 0, on_error="fail", name="strict").to("strict")
    with pytest.raises(TopologyError, match="on_error"):
        src.flat_map(lambda r: [r], on_error="sometimes")

    driver = TopologyTestDriver(app)
    driver.pipe("in", [{"d": 5}, {"d": 2}])
    assert driver.read_values("out") == [{"x": 2}, {"x": 5}]
    with pytest.raises(UserFunctionError, match="'strict'"):
        driver.pipe("in", [{"d": 0}])
    dlq = driver.read("in.dlq")
    assert [(r.headers["rs.operator"], r.value) for r in dlq] == [("divide", b'{"d":0}')]
