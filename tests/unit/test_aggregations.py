"""Each aggregation by example, through the running (non-windowed) aggregate operator."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from raystream.errors import ConfigError
from raystream.operators import aggregations as A
from raystream.operators.aggregations_batch import batch_partials
from raystream.operators.aggregations_running import RunningAggregateSpec
from raystream.operators.base import Batch


def run(aggs: dict[str, A.Aggregation], *batches: list[tuple[Any, int, dict[str, Any]]]) -> Any:
    op = RunningAggregateSpec.of(aggs).build("agg")
    out: list[dict[str, Any]] = []
    for recs in batches:
        b = Batch.from_rows(
            [r for _, _, r in recs],
            keys=[k for k, _, _ in recs],
            timestamps=[t for _, t, _ in recs],
            offsets=list(range(len(recs))),
        )
        (res,) = op.process(b)
        out.append({r["key"]: r for r in res.data.to_pylist()} if res is not None else {})
    return out, op


def test_count_sum_min_max_mean_ignore_nulls() -> None:
    (out,), _ = run(
        {
            "n": A.count(),
            "nx": A.count("x"),
            "s": A.sum("x"),
            "lo": A.min("x"),
            "hi": A.max("x"),
            "m": A.mean("x"),
        },
        [("a", 1, {"x": 2}), ("a", 2, {"x": None}), ("a", 3, {"x": 5}), ("b", 1, {"x": None})],
    )
    assert out["a"] == {"key": "a", "n": 3, "nx": 2, "s": 7, "lo": 2, "hi": 5, "m": 3.5}
    assert out["b"] == {"key": "b", "n": 1, "nx": 0, "s": None, "lo": None, "hi": None, "m": None}


def test_running_values_accumulate_across_batches() -> None:
    out, op = run(
        {"s": A.sum("x"), "m": A.mean("x")},
        [("a", 1, {"x": 1.5}), ("b", 2, {"x": 1.0})],
        [("a", 5, {"x": 2.5})],
    )
    assert out[1] == {"a": {"key": "a", "s": 4.0, "m": 2.0}}  # only the changed key
    assert op.store.get("a")[1] == 5  # the largest event time of the key


def test_min_max_of_strings() -> None:
    (out,), _ = run(
        {"lo": A.min("s"), "hi": A.max("s")},
        [("k", 1, {"s": "pear"}), ("k", 2, {"s": "apple"}), ("k", 3, {"s": "zucchini"})],
    )
    assert (out["k"]["lo"], out["k"]["hi"]) == ("apple", "zucchini")


def test_count_distinct_is_exact() -> None:
    out, _ = run(
        {"d": A.count_distinct("u")},
        [("k", 1, {"u": "x"}), ("k", 2, {"u": "y"}), ("k", 3, {"u": None})],
        [("k", 4, {"u": "x"}), ("k", 5, {"u": "z"})],
    )
    assert [o["k"]["d"] for o in out] == [2, 3]


def test_first_last_by_event_time_then_arrival() -> None:
    out, _ = run(
        {"f": A.first("v"), "l": A.last("v")},
        [("k", 5, {"v": "b"}), ("k", 3, {"v": "a"}), ("k", 9, {"v": "y"}), ("k", 9, {"v": "z"})],
        [("k", 3, {"v": "a2"}), ("k", 9, {"v": "z2"}), ("k", 1, {"v": None})],
    )
    assert (out[0]["k"]["f"], out[0]["k"]["l"]) == ("a", "z")
    # Ties: first keeps the earliest arrival, last takes the latest; null values are skipped.
    assert (out[1]["k"]["f"], out[1]["k"]["l"]) == ("a", "z2")


def test_collect_keeps_first_values_in_arrival_order_up_to_limit() -> None:
    out, _ = run(
        {"c": A.collect("v", limit=3)},
        [("k", 9, {"v": 1}), ("k", 1, {"v": None}), ("k", 2, {"v": 2})],
        [("k", 0, {"v": 3}), ("k", 0, {"v": 4})],
    )
    assert [o["k"]["c"] for o in out] == [[1, 2], [1, 2, 3]]


def test_custom_reducer_runs_per_record_in_arrival_order() -> None:
    agg = A.custom(initial=list, add=lambda acc, row: [*acc, row["v"]], result=tuple)
    out, _ = run(
        {"seen": agg}, [("k", 2, {"v": "a"}), ("k", 1, {"v": "b"})], [("k", 0, {"v": "c"})]
    )
    assert out[1]["k"]["seen"] == ["a", "b", "c"]


def test_merge_is_consistent_with_one_pass() -> None:
    rng = np.random.default_rng(7)
    values = [int(v) if v >= 0 else None for v in rng.integers(-2, 9, 40)]
    aggs = [
        A.count(),
        A.sum("x"),
        A.min("x"),
        A.max("x"),
        A.mean("x"),
        A.count_distinct("x"),
        A.first("x"),
        A.last("x"),
        A.collect("x", 7),
    ]
    table = pa.table({"x": values})
    ts = rng.integers(0, 5, 40)
    seq = np.arange(40)

    def partial(rows: slice) -> list[Any]:
        gid = np.zeros(len(values[rows]), np.int64)
        parts = batch_partials(
            aggs, table.slice(rows.start, rows.stop - rows.start), gid, 1, ts[rows], seq[rows]
        )
        return [p[0] for p in parts if p is not None]

    whole = partial(slice(0, 40))
    halves = [
        a.merge(x, y)
        for a, x, y in zip(aggs, partial(slice(0, 17)), partial(slice(17, 40)), strict=True)
    ]
    assert [a.result(v) for a, v in zip(aggs, whole, strict=True)] == [
        a.result(v) for a, v in zip(aggs, halves, strict=True)
    ]


def test_null_keys_are_dropped_and_counted() -> None:
    (out,), op = run({"n": A.count()}, [(None, 1, {"x": 1}), ("a", 2, {"x": 2})])
    assert out == {"a": {"key": "a", "n": 1}}
    assert op.dropped_null_keys == 1


def test_running_aggregate_snapshot_round_trip() -> None:
    _, op = run({"n": A.count(), "d": A.count_distinct("x")}, [("a", 1, {"x": 1})])
    state = pickle.loads(pickle.dumps(op.snapshot()))
    fresh = RunningAggregateSpec.of({"n": A.count(), "d": A.count_distinct("x")}).build("agg")
    fresh.restore(state)
    (res,) = fresh.process(Batch.from_rows([{"x": 2}], keys=["a"], timestamps=[2]))
    assert res is not None and res.data.to_pylist() == [{"key": "a", "n": 2, "d": 2}]


@pytest.mark.parametrize(
    "make",
    [
        lambda: A.sum(""),
        lambda: A.min(None),  # type: ignore[arg-type]
        lambda: A.collect("x", limit=0),
        lambda: A.custom(initial=1, add=lambda a, r: a),  # type: ignore[arg-type]
        lambda: A.normalize_aggs({}),
        lambda: A.normalize_aggs({"n": "count"}),  # type: ignore[dict-item]
        lambda: A.normalize_aggs({"key": A.count()}, reserved=("key",)),
        lambda: RunningAggregateSpec.of({"key": A.count()}),
    ],
)
def test_bad_aggregation_config_fails_fast(make: Any) -> None:
    with pytest.raises(ConfigError):
        make()
