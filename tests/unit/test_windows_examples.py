"""Example-based tests of the windowed aggregate operators: semantics a reader can check by hand."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from raystream.errors import OperatorContractError, TopologyError, UserFunctionError
from raystream.operators import aggregations as A
from raystream.operators.base import Batch
from raystream.operators.windows import (
    WindowedAggregateSpec,
    hopping,
    session,
    sliding,
    tumbling,
)
from raystream.operators.windows_common import WindowOperatorBase


def op_for(window: Any, emit: str = "final", grace: int = 0, ooo: int = 0, **aggs: Any) -> Any:
    spec = WindowedAggregateSpec.of(
        window, aggs or {"n": A.count()}, grace=grace, out_of_orderness=ooo, emit=emit
    )
    op = spec.build("agg")
    assert isinstance(op, WindowOperatorBase)
    return op


def feed(*recs: tuple[Any, int], start_offset: int = 0, x: list[Any] | None = None) -> Batch:
    xs = x if x is not None else list(range(len(recs)))
    return Batch.from_rows(
        [{"x": v} for v in xs],
        keys=[k for k, _ in recs],
        timestamps=[t for _, t in recs],
        offsets=list(range(start_offset, start_offset + len(recs))),
    )


def rows(batch: Batch | None, *cols: str) -> list[tuple[Any, ...]]:
    if batch is None:
        return []
    names = ("key", "window_start", "window_end", *cols)
    return sorted(tuple(r[c] for c in names) for r in batch.data.to_pylist())


def test_tumbling_emits_once_on_close_and_routes_late_records() -> None:
    op = op_for(tumbling("10ms"), grace=2, s=A.sum("x"))
    res, late = op.process(feed(("a", 1), ("a", 5), ("b", 9), x=[1, 2, 3]))
    assert res is None and late is None  # nothing closed yet: W = 9 < 10 + 2
    res, late = op.process(feed(("a", 12), ("a", 3), start_offset=3, x=[4, 5]))
    # W reaches 12 = end 10 + grace 2 at offset 3: [0, 10) closes before offset 4 (ts 3) arrives.
    assert rows(res, "s") == [("a", 0, 10, 3), ("b", 0, 10, 3)]
    assert late is not None and late.offsets.to_pylist() == [4]
    assert late.data.to_pylist() == [{"x": 5}]  # the original record, untouched
    info = op.last_late_info
    assert info is not None
    assert info.to_pylist() == [{"window_start": 0, "window_end": 10, "watermark": 12}]
    assert res is not None and res.timestamps.to_pylist() == [9, 9]  # window_end - 1
    assert res.offsets.null_count == 2
    assert op.late_records == 1


def test_record_within_grace_still_counts() -> None:
    op = op_for(tumbling(10), grace=5)
    op.process(feed(("a", 12)))  # W = 12 < 10 + 5
    res, late = op.process(feed(("a", 9), start_offset=1))
    assert late is None and res is None
    res, _ = op.on_watermark(15)
    assert rows(res, "n") == [("a", 0, 10, 1)]


def test_out_of_orderness_holds_the_watermark_back() -> None:
    op = op_for(tumbling(10), ooo=3)
    res, _ = op.process(feed(("a", 1), ("a", 12), ("a", 8)))  # W = 9 after ts 12
    assert res is None
    assert op.watermark == 9
    res, _ = op.process(feed(("a", 13), start_offset=3))
    assert rows(res, "n") == [("a", 0, 10, 2)]


def test_hopping_record_late_for_some_windows_only_is_not_sent_to_late_port() -> None:
    op = op_for(hopping(10, 5))
    res, _ = op.process(feed(("a", 11)))  # W = 11 closes [0, 10)
    res, late = op.process(feed(("a", 7), start_offset=1))
    # ts 7 belongs to [0, 10) (closed: ignored) and [5, 15) (open: counted).
    assert late is None
    res, _ = op.on_watermark(100)
    assert rows(res, "n") == [("a", 5, 15, 2), ("a", 10, 20, 1)]


def test_sliding_windows_follow_kafka_streams_definition() -> None:
    op = op_for(sliding(5), s=A.sum("x"))
    first, _ = op.process(feed(("a", 10), ("a", 12), x=[1, 2]))
    assert rows(first, "s") == [("a", 5, 10, 1)]  # closed at W = 12 >= 10 + 1
    res, _ = op.on_watermark(100)
    # Left windows [5,10] and [7,12]; the right window of 10 is [11,16]; that of 12 is empty.
    assert rows(res, "s") == [("a", 7, 12, 3), ("a", 11, 16, 2)]
    assert res is not None and res.timestamps.to_pylist() == [12, 16]  # inclusive ends


def test_sliding_right_window_created_by_a_record_at_the_closing_edge() -> None:
    # Right window [1, 3] of the record at 0 closes at W >= 3 + 1 + grace 0 = 4. A record at 2
    # arriving at W = 3 (pushed by another key) still reaches it; its own left window [0, 2]
    # closed at W = 3. The record at 0 must stay buffered until W >= 0 + 2 + 2 + 0.
    op = op_for(sliding(2))
    op.process(feed(("k", 0)))
    op.process(feed(("z", 3), start_offset=1))
    res, late = op.process(feed(("k", 2), start_offset=2))
    assert late is None
    res, _ = op.on_watermark(100)
    assert rows(res, "n") == [("k", 1, 3, 1), ("z", 1, 3, 1)]


def test_session_merges_when_a_record_bridges_two_sessions() -> None:
    log = A.custom(
        initial=tuple, add=lambda a, r: (*a, r["x"]), merge=lambda a, b: a + b, result=list
    )
    op = op_for(session(5), grace=100, n=A.count(), log=log)
    op.process(feed(("a", 0), ("a", 20), x=["p", "q"]))
    assert op.open_windows() == 2
    op.process(feed(("a", 10), start_offset=2, x=["r"]))  # 5 away from neither: a new session
    assert op.open_windows() == 3
    op.process(feed(("a", 5), ("a", 15), start_offset=3, x=["s", "t"]))
    assert op.open_windows() == 1
    res, _ = op.on_watermark(10**6)
    # Kafka Streams' order: merge the touched sessions by start into initial(), then add the
    # record. s joins [0,0]+[10,10] -> (p, r, s); t joins that and [20,20] -> (p, r, s, q, t).
    assert rows(res, "n", "log") == [("a", 0, 20, 5, ["p", "r", "s", "q", "t"])]
    assert res is not None and res.timestamps.to_pylist() == [20]


def test_session_closes_at_end_plus_gap_plus_grace() -> None:
    op = op_for(session(5), grace=2)
    op.process(feed(("a", 10)))
    res, _ = op.on_watermark(17)  # close at 10 + 5 + 1 + 2 = 18
    assert res is None
    res, _ = op.on_watermark(18)
    assert rows(res, "n") == [("a", 10, 10, 1)]
    # A record within the gap of the closed session starts a new one (it was final).
    res, late = op.process(feed(("a", 12), start_offset=1))
    assert late is None and op.open_windows() == 1
    res, late = op.process(feed(("a", 1), start_offset=2))  # [1,1] would close at 9 <= 18
    assert late is not None and late.offsets.to_pylist() == [2]


def test_emit_update_gives_one_row_per_changed_window_per_batch() -> None:
    op = op_for(tumbling(10), emit="update", s=A.sum("x"))
    res, _ = op.process(feed(("a", 1), ("a", 2), ("b", 3), x=[1, 2, 3]))
    assert rows(res, "s") == [("a", 0, 10, 3), ("b", 0, 10, 3)]
    res, _ = op.process(feed(("a", 4), start_offset=3, x=[10]))
    assert rows(res, "s") == [("a", 0, 10, 13)]
    res, _ = op.on_watermark(100)
    assert res is None  # update mode emits nothing more on close
    assert op.open_windows() == 0


def test_null_keys_are_dropped_counted_and_do_not_move_time() -> None:
    op = op_for(tumbling(10))
    res, late = op.process(feed(("a", 1), (None, 50), ("a", 2)))
    assert late is None and res is None
    assert op.dropped_null_keys == 1
    assert op.watermark == 2
    res, _ = op.on_watermark(10)
    assert rows(res, "n") == [("a", 0, 10, 2)]


def test_keys_keep_their_arrow_type() -> None:
    op = op_for(tumbling(10))
    op.process(
        Batch(
            pa.record_batch({"x": [1, 2]}),
            pa.array([b"\x00k", b"\x00k"], pa.binary()),
            pa.array([1, 2], pa.int64()),
            pa.array([0, 1], pa.int64()),
        )
    )
    res, _ = op.on_watermark(10)
    assert res is not None
    assert res.data.schema.field("key").type == pa.binary()
    assert res.keys.to_pylist() == [b"\x00k"]
    assert res.data.schema.field("window_start").type == pa.int64()


def test_key_name_names_the_key_column() -> None:
    spec = WindowedAggregateSpec.of(tumbling(10), {"n": A.count()}, key_name="customer")
    op = spec.build("agg")
    op.process(feed(("c1", 1)))
    res, _ = op.on_watermark(10)
    assert res is not None
    assert res.data.schema.names == ["customer", "window_start", "window_end", "n"]


def test_missing_field_is_a_clear_error() -> None:
    op = op_for(tumbling(10), s=A.sum("amount"))
    with pytest.raises(OperatorContractError, match="amount"):
        op.process(feed(("a", 1)))


def test_failing_custom_reducer_raises_user_function_error() -> None:
    bad = A.custom(initial=int, add=lambda a, r: a + r["nope"])
    op = op_for(tumbling(10), bad=bad)
    with pytest.raises(UserFunctionError, match="KeyError"):
        op.process(feed(("a", 1)))


@pytest.mark.parametrize(
    "window", [tumbling(10), hopping(10, 3), sliding(10), session(10)], ids=lambda w: w.kind
)
def test_state_of_closed_windows_is_released(window: Any) -> None:
    op = op_for(window, c=A.collect("x", 5), d=A.count_distinct("x"))
    peak = 0
    for step in range(50):
        t = step * 10
        op.process(feed(*[(f"k{i}", t + i) for i in range(5)], start_offset=step * 5))
        peak = max(peak, op.open_windows())
        # Only windows that can still receive records stay: a bounded number per key.
        assert op.open_windows() <= 5 * 8
    assert peak > 0
    before = op.store.approx_bytes()
    op.on_watermark(10**6)
    assert op.open_windows() == 0
    assert len(op.store) == 0
    assert op.store.approx_bytes() < before


def test_nested_keys_are_refused_with_the_key_type() -> None:
    op = op_for(tumbling(10))
    with pytest.raises(TopologyError, match=r"agg: cannot aggregate by a list<.*> key; re-key"):
        op.process(feed(([1, 2], 5)))
