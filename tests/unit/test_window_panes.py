"""Columnar window panes: merges, type changes, checkpoints of old and new form."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import raystream as rs
from raystream._kafka import headers as hdr
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.task import Incoming, TaskRunner
from raystream.errors import OperatorContractError
from raystream.operators import aggregations as A
from raystream.operators.base import Batch
from raystream.operators.windows import WindowedAggregateSpec, tumbling
from raystream.operators.windows_panes import PaneStore, components
from raystream.operators.windows_panes_op import PaneWindowAggregateOperator
from raystream.operators.windows_time import TimeWindowAggregateOperator
from raystream.state.checkpoint import CheckpointStore
from raystream.topology.plan import TaskId

AGGS = {"n": A.count(), "s": A.sum("x"), "lo": A.min("x"), "hi": A.max("x"), "m": A.mean("x")}


def _op(aggs: dict[str, A.Aggregation] = AGGS, grace: int = 0) -> PaneWindowAggregateOperator:
    op = WindowedAggregateSpec.of(tumbling(10), aggs, grace=grace).build("agg")
    assert isinstance(op, PaneWindowAggregateOperator)
    return op


def _feed(op: PaneWindowAggregateOperator, rows: list[tuple[str, int, object]]) -> list[dict]:
    batch = Batch.from_rows(
        [{"x": x} for _, _, x in rows],
        keys=[k for k, _, _ in rows],
        timestamps=[t for _, t, _ in rows],
    )
    out, _ = op.process(batch)
    return [] if out is None else out.data.to_pylist()


def _close(op: PaneWindowAggregateOperator) -> list[dict]:
    out, _ = op.on_watermark(10**6)
    return [] if out is None else sorted(out.data.to_pylist(), key=lambda r: r["key"])


def test_only_columnar_aggregations_take_panes() -> None:
    spec = WindowedAggregateSpec.of(tumbling(10), {"f": A.first("x"), "n": A.count()})
    assert isinstance(spec.build("agg"), TimeWindowAggregateOperator)


def test_int_then_float_values_promote_the_column() -> None:
    op = _op()
    _feed(op, [("a", 1, 2), ("b", 1, None)])
    _feed(op, [("a", 2, 0.5), ("b", 3, None)])
    rows = _close(op)
    assert rows[0] == {
        "key": "a", "window_start": 0, "window_end": 10, "n": 2, "s": 2.5, "lo": 0.5,
        "hi": 2.0, "m": 1.25,
    }  # fmt: skip
    assert rows[1] == {
        "key": "b", "window_start": 0, "window_end": 10, "n": 2, "s": None, "lo": None,
        "hi": None, "m": None,
    }  # fmt: skip


def test_int64_overflow_keeps_python_ints_and_fails_clearly_at_output() -> None:
    op = _op({"s": A.sum("x")})
    big = 2**62
    _feed(op, [("a", 1, big)])
    _feed(op, [("a", 2, big)])
    pane = op.panes.get(0)
    assert pane.vals[0].dtype == object and pane.vals[0][0] == 2**63  # exact, not wrapped
    with pytest.raises(OperatorContractError, match="cannot form one Arrow column"):
        _close(op)


def test_strings_take_the_object_path() -> None:
    op = _op({"lo": A.min("x"), "hi": A.max("x")})
    _feed(op, [("a", 1, "pear"), ("a", 2, "apple")])
    _feed(op, [("a", 3, "zebra")])
    assert _close(op)[0] == {"key": "a", "window_start": 0, "window_end": 10, "lo": "apple",
                             "hi": "zebra"}  # fmt: skip


def test_a_delta_checkpoint_holds_only_the_touched_panes() -> None:
    op = _op()
    _feed(op, [("a", 1, 1), ("b", 15, 2)])
    op.panes.mark_clean()
    _feed(op, [("c", 16, 3)])
    assert op.panes.dirty_keys() == {10}
    _feed(op, [("c", 31, 3)])  # opens [30, 40), closes [10, 20) ([0, 10) closed at 15)
    assert op.panes.dirty_keys() == {10, 30}
    assert set(op.panes.starts()) == {30}


def test_panes_pickle_and_restore_into_a_fresh_operator() -> None:
    op = _op(grace=20)
    _feed(op, [("a", 1, 1), ("b", 2, 2.5), ("a", 12, 4)])
    fresh = _op(grace=20)
    fresh.restore(pickle.loads(pickle.dumps(op.snapshot())))
    assert fresh.open_windows() == 3
    assert dict(fresh.panes.items()) == dict(op.panes.items())
    _feed(op, [("a", 3, 7)])
    _feed(fresh, [("a", 3, 7)])
    assert _close(fresh) == _close(op)


def test_old_checkpoints_of_one_row_per_window_load_into_panes() -> None:
    comps = components(list(AGGS.values()))
    store = PaneStore(comps, [1, 1, 1, 1, 2])
    # (key, start) -> (count, sum, min, max, (sum, count)): the row store's accumulators.
    store.load(
        [
            (("a", 0), (2, 3, 1, 2, (3, 2))),
            (("b", 0), (1, None, None, None, (None, 0))),
            (("a", 10), (1, 2.5, 2.5, 2.5, (2.5, 1))),
        ]
    )
    assert sorted(store.starts()) == [0, 10]
    pane = store.get(0)
    assert pane.keys == ["a", "b"]
    np.testing.assert_array_equal(pane.column(1)[1], [True, False])
    op = _op()
    snap = op.snapshot(with_stores=False)
    op.restore(snap, stores=[list(store.items())])
    rows = _close(op)
    assert [(r["key"], r["window_start"], r["n"], r["m"]) for r in rows] == [
        ("a", 0, 2, 1.5),
        ("a", 10, 1, 2.5),
        ("b", 0, 1, None),
    ]


def test_loading_foreign_state_fails_clearly() -> None:
    store = PaneStore(components([A.count()]), [1])
    with pytest.raises(OperatorContractError, match="neither a pane"):
        store.load([("k", 3)])


def test_state_size_follows_the_open_windows() -> None:
    op = _op()
    _feed(op, [(f"k{i}", 1, i) for i in range(1000)])
    big = op.panes.approx_bytes()
    assert big > 1000 * 8 * 5  # at least the accumulator arrays
    _close(op)
    assert op.panes.approx_bytes() < big / 10


class _Sink:
    def send(self, topic, value, key, timestamp, headers) -> None:  # type: ignore[no-untyped-def]
        pass


def _task(app: rs.App) -> TaskRunner:
    return TaskRunner(
        app.name,
        TaskId(0, 0),
        app.plan(),
        _Sink(),  # type: ignore[arg-type]
        dlq_topic=lambda t: f"{t}.dlq",
        provenance=functools.partial(hdr.provenance, "0_0", 0, 0),
    )


def _panes(task: TaskRunner) -> dict:
    (op,) = [o for o in task.operators.values() if isinstance(o, PaneWindowAggregateOperator)]
    return dict(op.panes.items())


def test_checkpoints_write_small_changes_as_rows_and_restore_every_epoch(
    tmp_path: Path,
) -> None:
    app = rs.App("panes", brokers="unused:1", checkpoints=tmp_path.as_uri())
    (
        app.stream("in", key="k", time="ts")
        .group_by("k")
        .window(rs.tumbling("1h"))
        .agg(n=rs.count(), total=rs.sum("x"), m=rs.mean("x"))
        .to("out")
    )
    task = _task(app)
    store = CheckpointStore(tmp_path.as_uri(), app.name)
    ck = TaskCheckpointer(store, task, compact_every=100)
    (op,) = [o for o in task.operators.values() if isinstance(o, PaneWindowAggregateOperator)]
    offset = 0
    states = {}
    # All keys in one window: a new pane, a trickle, a big change, a trickle.
    for epoch, keys in enumerate([range(1000), range(5), range(600), [3, 999, 7]], start=1):
        values = [json.dumps({"k": f"k{i}", "ts": 1000 + i, "x": i * 0.5}).encode() for i in keys]
        n = len(values)
        task.process(Incoming("in", values, [None] * n, [0] * n, list(range(offset, offset + n))))
        offset += n
        dirty = op.panes.dirty_keys()
        if epoch in (2, 4):  # a trickle: rows of the changed windows only
            assert all(isinstance(k, tuple) for k in dirty) and len(dirty) == len(keys)
        if epoch == 3:  # most of the pane: whole, and the rows of epoch 2 deleted
            assert 0 in dirty and ("k1", 0) in dirty
        ck.write((epoch, 0), {"in[0]": offset})
        states[epoch] = {s: p.copy() for s, p in _panes(task).items()}
    for epoch, expected in states.items():
        fresh = _task(app)
        TaskCheckpointer(store, fresh, compact_every=100).restore((epoch, 0))
        assert _panes(fresh) == expected, f"epoch {epoch}"
