"""Example-based tests of the stream-stream windowed join: semantics a reader can check by hand."""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa

from raystream.operators.base import Batch
from raystream.operators.joins_stream import StreamStreamJoinOperator, StreamStreamJoinSpec

ORDER = pa.schema([("item", pa.string())])
PAYMENT = pa.schema([("amount", pa.int64())])


def join(**kw: Any) -> StreamStreamJoinOperator:
    spec = StreamStreamJoinSpec.of(left_schema=ORDER, right_schema=PAYMENT, **kw)
    return spec.build("orders_payments")


def orders(*recs: tuple[str, int, str], first: int = 0) -> Batch:
    return Batch.from_rows(
        [{"item": item} for _, _, item in recs],
        keys=[k for k, _, _ in recs],
        timestamps=[t for _, t, _ in recs],
        offsets=list(range(first, first + len(recs))),
    )


def payments(*recs: tuple[str, int, int], first: int = 100) -> Batch:
    return Batch.from_rows(
        [{"amount": a} for _, _, a in recs],
        keys=[k for k, _, _ in recs],
        timestamps=[t for _, t, _ in recs],
        offsets=list(range(first, first + len(recs))),
    )


def result(batch: Batch | None) -> list[tuple[Any, ...]]:
    if batch is None:
        return []
    return [
        (k, t, o, r["item"], r["amount"])
        for k, t, o, r in zip(
            batch.keys.to_pylist(),
            batch.timestamps.to_pylist(),
            batch.offsets.to_pylist(),
            batch.data.to_pylist(),
            strict=True,
        )
    ]


def test_inner_join_emits_each_pair_once_when_its_second_record_arrives() -> None:
    op = join(window="30m")
    minute = 60_000
    out, late = op.process_left(orders(("o1", 0, "pen"), ("o2", minute, "ink")))
    assert out is None and late is None  # nothing to pair with yet
    out, late = op.process_right(
        payments(("o1", 10 * minute, 5), ("o1", 31 * minute, 6), ("o3", minute, 7))
    )
    # The second o1 payment is 31 minutes after the order: outside the window.
    assert result(out) == [("o1", 10 * minute, 100, "pen", 5)]
    assert late is None
    out, _ = op.process_left(orders(("o1", 20 * minute, "cap"), first=2))
    # A new order pairs with both earlier payments (partners by event time).
    assert result(out) == [
        ("o1", 20 * minute, 2, "cap", 5),
        ("o1", 31 * minute, 2, "cap", 6),
    ]


def test_asymmetric_windows_bound_each_direction() -> None:
    # Payments may come up to 10 ms after the order, and never before it.
    op = join(before=0, after=10)
    op.process_left(orders(("o1", 100, "pen")))
    out, _ = op.process_right(
        payments(("o1", 99, 1), ("o1", 100, 2), ("o1", 110, 3), ("o1", 111, 4))
    )
    assert [r[4] for r in result(out)] == [2, 3]


def test_left_join_emits_an_unmatched_order_once_when_no_payment_can_match_it() -> None:
    op = join(window=10, grace=5, how="left")
    op.process_left(orders(("o1", 100, "pen"), ("o2", 100, "ink")))
    out, _ = op.process_right(payments(("o1", 105, 9)))
    assert result(out) == [("o1", 105, 100, "pen", 9)]
    # o2 could still match a payment at 110 until W >= 100 + 10 + 10 + 1 + 5 = 126.
    out, _ = op.process_right(payments(("zz", 125, 0), first=101))
    assert result(out) == []
    out, _ = op.process_right(payments(("zz", 126, 0), first=102))
    assert result(out) == [("o2", 100, 1, "ink", None)]  # its own time and offset
    out, _ = op.on_watermark(10**6)
    assert result(out) == []  # o1 matched; payments are not emitted alone in a left join
    assert op.buffered() == 0


def test_outer_join_emits_both_sides_unmatched_records() -> None:
    op = join(window=5, how="outer")
    op.process_left(orders(("o1", 10, "pen")))
    op.process_right(payments(("o2", 12, 3)))
    out, _ = op.on_watermark(100)
    assert result(out) == [("o1", 10, 0, "pen", None), ("o2", 12, 100, None, 3)]
    assert op.on_watermark(50) == [None, None]  # the watermark does not go back


def test_late_records_go_untouched_to_port_1() -> None:
    op = join(window=10, grace=2)
    op.process_left(orders(("o1", 100, "pen")))
    out, late = op.process_right(
        payments(("o1", 95, 1), ("o9", 200, 2), ("o1", 100, 3), ("o1", 187, 4))
    )
    # W = 200 after offset 101: a payment at t is late when t + 10 + 1 + 2 <= 200.
    assert result(out) == [("o1", 100, 100, "pen", 1)]
    assert late is not None
    assert late.offsets.to_pylist() == [102, 103]
    assert late.data.to_pylist() == [{"amount": 3}, {"amount": 4}]
    assert op.late_records == 2
    # An order is late by the same rule with its own window end.
    _, late = op.process_left(orders(("o9", 187, "x"), ("o9", 188, "y"), first=1))
    assert late is not None and late.offsets.to_pylist() == [1]


def test_out_of_orderness_and_null_keys() -> None:
    op = join(window=0, out_of_orderness=10)
    out, late = op.process_left(
        Batch.from_rows(
            [{"item": "a"}, {"item": "b"}, {"item": "c"}],
            keys=["o1", None, "o2"],
            timestamps=[50, 60, None],
        )
    )
    assert out is None and late is None
    assert (op.dropped_null_keys, op.dropped_null_timestamps) == (1, 1)
    assert op.watermark == 40  # 50 - out_of_orderness; the null-key record does not count
    out, late = op.process_right(payments(("o1", 50, 1), ("o1", 39, 2)))
    assert result(out) == [("o1", 50, 100, "a", 1)] and late is not None


def test_buffers_are_bounded_by_the_watermark() -> None:
    op = join(window=10)
    for i in range(100):
        op.process_left(orders((f"o{i}", i * 100, "x"), first=i))
        op.process_right(payments((f"o{i}", i * 100 + 5, i), first=1000 + i))
        # Retention is before + after + 1 + grace = 21 ms: at most the latest pair is held.
        assert op.buffered() <= 2
    assert len(op.buffers["left"]) <= 1


def test_snapshot_mid_stream_keeps_buffers_matched_flags_and_watermark() -> None:
    spec = StreamStreamJoinSpec.of(10, how="outer", left_schema=ORDER, right_schema=PAYMENT)
    op = spec.build("j")
    op.process_left(orders(("o1", 100, "pen"), ("o2", 101, "ink")))
    op.process_right(payments(("o1", 104, 7)))
    state = pickle.loads(pickle.dumps(op.snapshot()))
    restored = spec.build("j")
    restored.restore(state)
    assert restored.watermark == 104 and restored.buffered() == 3
    out, _ = restored.process_right(payments(("o2", 111, 8), first=101))
    assert result(out) == [("o2", 111, 101, "ink", 8)]
    out, _ = restored.on_watermark(10**6)
    assert result(out) == []  # every record matched once
    assert restored.buffered() == 0
