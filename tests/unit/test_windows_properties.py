"""Property tests: every window type and aggregation equals the plain-Python reference.

Random keys (some null), out-of-order timestamps, random grace / out-of-orderness, random batch
boundaries and watermark calls between batches. Compared per step: result rows (as a multiset)
and the offsets of the records sent to the late port.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from raystream.operators.windows_panes_op import PaneWindowAggregateOperator
from tests.unit.reference_windows import Rec, ReferenceWindows

AGGS: dict[str, A.Aggregation] = {
    "n": A.count(),
    "nx": A.count("x"),
    "s": A.sum("x"),
    "lo": A.min("x"),
    "hi": A.max("x"),
    "m": A.mean("x"),
    "d": A.count_distinct("x"),
    "f": A.first("x"),
    "l": A.last("x"),
    "c": A.collect("x", limit=3),
    # Order-sensitive on purpose: checks arrival order and Kafka Streams' session merge order.
    "cu": A.custom(
        initial=tuple,
        add=lambda acc, row: (*acc, row["x"]),
        merge=lambda a, b: a + b,
        result=lambda acc: ",".join(map(str, acc)),
    ),
}
#: The aggregations columnar panes hold (tumbling and hopping windows take that path with them).
PANE_AGGS = {k: AGGS[k] for k in ("n", "nx", "s", "lo", "hi", "m")}
KEY_POOLS = {
    "str": ["a", "b", "c", "a", None],
    "int": [1, 2, 3, 1, None],
    "bytes": [b"k1", b"k2", b"k1", None],
}

Step = tuple[str, Any]  # ("batch", [Rec...]) or ("wm", int)


@st.composite
def scenarios(draw: st.DrawFn, kind: str, floats: bool = False) -> dict[str, Any]:
    pool = KEY_POOLS[draw(st.sampled_from(sorted(KEY_POOLS)))]
    n = draw(st.integers(0, 35))
    keys = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    value = st.none() | st.integers(-3, 6)
    if floats:  # ints and floats mixed, in one batch or across batches
        value |= st.floats(-4, 7, allow_nan=False).map(lambda f: round(f, 2))
    xs = draw(st.lists(value, min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=5))))
    steps: list[Step] = []
    prev = 0
    for cut in [*cuts, n]:
        steps.append(("batch", list(range(prev, cut))))
        prev = cut
        if draw(st.booleans()) and draw(st.booleans()):
            steps.append(("wm", draw(st.integers(0, 75))))
    if kind == "tumbling":
        window = tumbling(draw(st.integers(1, 12)))
    elif kind == "hopping":
        size = draw(st.integers(1, 12))
        window = hopping(size, draw(st.integers(1, size)))
    elif kind == "sliding":
        window = sliding(draw(st.integers(1, 10)))
    else:
        window = session(draw(st.integers(1, 8)))
    return {
        "window": window,
        "grace": draw(st.integers(0, 10)),
        "ooo": draw(st.integers(0, 5)),
        "records": [(keys[i], ts[i], {"x": xs[i]}) for i in range(n)],
        "steps": steps,
        "snapshot_at": draw(st.integers(0, len(steps))),
    }


def _batch(records: list[tuple[Any, int, dict[str, Any]]], idx: list[int]) -> Batch:
    return Batch.from_rows(
        [records[i][2] for i in idx],
        keys=[records[i][0] for i in idx],
        timestamps=[records[i][1] for i in idx],
        offsets=idx,
    )


def _rows(batch: Batch | None, kind: str, names: list[str]) -> list[tuple[Any, ...]]:
    if batch is None:
        return []
    out = []
    for row, t in zip(batch.data.to_pylist(), batch.timestamps.to_pylist(), strict=True):
        end = row["window_end"]
        assert t == (end - 1 if kind in ("tumbling", "hopping") else end)
        out.append((row["key"], row["window_start"], end, *(row[n] for n in names)))
    return out


def _late(batch: Batch | None) -> list[int]:
    return [] if batch is None else sorted(batch.offsets.to_pylist())


def _run_impl(
    spec: WindowedAggregateSpec, sc: dict[str, Any], snapshot_at: int | None = None
) -> list[tuple[list[Any], list[int]]]:
    op: WindowOperatorBase = spec.build("agg")  # type: ignore[assignment]
    kind = spec.window.kind
    names = [n for n, _ in spec.aggs]
    out = []
    for i, (what, arg) in enumerate([*sc["steps"], ("wm", 10**6)]):
        if snapshot_at is not None and i == snapshot_at:
            state = pickle.loads(pickle.dumps(op.snapshot()))
            op = spec.build("agg")  # type: ignore[assignment]
            op.restore(state)
        if what == "batch":
            res, late = op.process(_batch(sc["records"], arg))
            out.append((sorted(_rows(res, kind, names), key=repr), _late(late)))
        else:
            res, late = op.on_watermark(arg)
            assert late is None
            out.append((sorted(_rows(res, kind, names), key=repr), []))
    assert op.open_windows() == 0  # everything closed by the final watermark
    assert len(op.store) == 0
    return out


def _run_ref(spec: WindowedAggregateSpec, sc: dict[str, Any]) -> list[tuple[list[Any], list[int]]]:
    ref = ReferenceWindows(
        spec.window, spec.aggs, spec.grace_ms, spec.out_of_orderness_ms, spec.emit
    )
    out = []
    for what, arg in [*sc["steps"], ("wm", 10**6)]:
        if what == "batch":
            recs = [
                Rec(sc["records"][i][0], sc["records"][i][1], i, sc["records"][i][2]) for i in arg
            ]
            rows, late = ref.process(recs)
            out.append((sorted(rows, key=repr), sorted(late)))
        else:
            out.append((sorted(ref.on_watermark(arg), key=repr), []))
    return out


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
@SETTINGS
@given(data=st.data())
def test_equals_reference(kind: str, emit: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(kind))
    spec = WindowedAggregateSpec.of(
        sc["window"], AGGS, grace=sc["grace"], out_of_orderness=sc["ooo"], emit=emit
    )
    got = _run_impl(spec, sc)
    assert got == _run_ref(spec, sc)
    if emit == "final":
        windows = Counter((r[0], r[1], r[2]) for rows, _ in got for r in rows)
        assert all(c == 1 for c in windows.values()), "a window was emitted twice"


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_snapshot_restore_changes_nothing(kind: str, emit: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(kind))
    spec = WindowedAggregateSpec.of(
        sc["window"], AGGS, grace=sc["grace"], out_of_orderness=sc["ooo"], emit=emit
    )
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"]) == _run_impl(spec, sc)


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_final_results_do_not_depend_on_batch_boundaries(kind: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(kind))
    sc["steps"] = [s for s in sc["steps"] if s[0] == "batch"]
    one_batch = dict(sc, steps=[("batch", list(range(len(sc["records"]))))])
    spec = WindowedAggregateSpec.of(
        sc["window"], AGGS, grace=sc["grace"], out_of_orderness=sc["ooo"]
    )

    def flat(out: list[tuple[list[Any], list[int]]]) -> tuple[list[Any], list[int]]:
        rows = sorted((r for rows, _ in out for r in rows), key=repr)
        return rows, sorted(o for _, late in out for o in late)

    assert flat(_run_impl(spec, sc)) == flat(_run_impl(spec, one_batch))


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
@SETTINGS
@given(data=st.data())
def test_panes_equal_reference(kind: str, emit: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(kind, floats=True))
    spec = WindowedAggregateSpec.of(
        sc["window"], PANE_AGGS, grace=sc["grace"], out_of_orderness=sc["ooo"], emit=emit
    )
    assert isinstance(spec.build("agg"), PaneWindowAggregateOperator)
    got = _run_impl(spec, sc)
    assert _approx(got) == _approx(_run_ref(spec, sc))
    assert _approx(_run_impl(spec, sc, snapshot_at=sc["snapshot_at"])) == _approx(got)


def _approx(out: list[tuple[list[Any], list[int]]]) -> list[tuple[list[Any], list[int]]]:
    """Floats rounded: sums of a batch's partials may round differently from one by one."""

    def r(v: Any) -> Any:
        return round(v, 6) if isinstance(v, float) else v

    return [
        (sorted((tuple(r(v) for v in row) for row in rows), key=repr), late) for rows, late in out
    ]
