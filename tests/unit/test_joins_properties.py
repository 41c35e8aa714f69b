"""Property tests: every join equals its plain-Python reference (``reference_joins``).

Random interleavings of the two sides (every call carries one side; runs of a side are cut at
random batch boundaries), keys of several types with nulls, out-of-order timestamps, tombstones,
declared or learned schemas. Comparisons per call:

* table joins, the materialiser and table-table joins: ordered lists (their output order is
  defined: input order);
* stream-stream joins: multisets (sorted), since the reference emits unmatched rows record by
  record while the operator emits them at the end of the call; plus the late records' offsets.

A snapshot (pickled) taken at a random call and restored into a fresh operator changes nothing.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raystream.operators.base import Batch
from raystream.operators.joins_base import BinaryOperator, BinaryOperatorSpec
from raystream.operators.joins_stream import StreamStreamJoinOperator, StreamStreamJoinSpec
from raystream.operators.joins_table import (
    GlobalTableJoinSpec,
    StreamTableJoinSpec,
    TableOperator,
    TableSpec,
)
from raystream.operators.joins_table_table import TableTableJoinSpec
from raystream.operators.joins_versioned import VersionedTableJoinOperator, VersionedTableJoinSpec
from tests.unit.reference_joins import (
    Out,
    Rec,
    RefLookupJoin,
    RefStreamStreamJoin,
    RefTable,
    RefTableTableJoin,
    RefVersionedJoin,
    materialise,
    norm,
    norm_outs,
    outs,
)

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_POOLS: dict[str, tuple[pa.DataType, list[Any]]] = {
    "str": (pa.string(), ["a", "b", "c", "a", None]),
    "int": (pa.int64(), [1, 2, 3, 1, None]),
}

# Stream / left rows carry "lo" (their offset, never null), table / right rows "v" or "ro"; both
# carry "sx", so the right one is renamed "right_sx".
LEFT_NAMES = ["lo", "sx", "gk"]
RIGHT_NAMES = ["v", "sx"]
RIGHT_COLUMNS = {"v": "v", "sx": "right_sx"}

Step = tuple[str, Any]  # (side, [record indices]) or ("wm", int)


@st.composite
def scenarios(
    draw: st.DrawFn,
    tombstones: str = "right",
    null_ts: bool = False,
    watermarks: bool = False,
    ts_max: int = 40,
    side_pool: tuple[str, ...] = ("left", "right"),
) -> dict[str, Any]:
    """Records of both sides and the calls that deliver them (see module doc)."""
    key_type, pool = KEY_POOLS[draw(st.sampled_from(sorted(KEY_POOLS)))]
    n = draw(st.integers(0, 40))
    sides = draw(st.lists(st.sampled_from(side_pool), min_size=n, max_size=n))
    keys = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    ts_values = st.integers(0, ts_max) | st.none() if null_ts else st.integers(0, ts_max)
    ts = draw(st.lists(ts_values, min_size=n, max_size=n))
    if draw(st.booleans()):
        # Mostly increasing with some disorder, as real streams: more records on time.
        ts = [None if t is None else max(0, i + t % 9 - 6) for i, t in enumerate(ts)]
    xs = draw(st.lists(st.none() | st.integers(-3, 3), min_size=n, max_size=n))
    gks = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    dead = draw(st.lists(st.integers(0, 3).map(lambda d: d == 0), min_size=n, max_size=n))
    records: list[tuple[str, Rec]] = []
    for i in range(n):
        side = sides[i]
        tomb = dead[i] and tombstones in (side, "both")
        if tomb:
            row = None
        elif side == "left":
            row = {"lo": i, "sx": xs[i], "gk": gks[i]}
        else:
            row = {"v": i, "sx": xs[i]}
        records.append((side, Rec(keys[i], ts[i], i, row)))
    cuts = set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=8)))
    steps: list[Step] = []
    run: list[int] = []
    for i in range(n + 1):
        if run and (i == n or i in cuts or sides[i] != sides[run[0]]):
            steps.append((sides[run[0]], run))
            run = []
            if watermarks and draw(st.integers(0, 3)) == 0:
                steps.append(("wm", draw(st.integers(0, ts_max + 20))))
        if i < n:
            run.append(i)
    return {
        "key_type": key_type,
        "records": records,
        "steps": steps,
        "declared": draw(st.booleans()),
        "snapshot_at": draw(st.integers(0, len(steps))),
    }


def _schemas(sc: dict[str, Any]) -> tuple[pa.Schema, pa.Schema]:
    left = pa.schema([("lo", pa.int64()), ("sx", pa.int64()), ("gk", sc["key_type"])])
    right = pa.schema([("v", pa.int64()), ("sx", pa.int64())])
    return left, right


def _batch(sc: dict[str, Any], idx: list[int]) -> Batch:
    recs = [sc["records"][i][1] for i in idx]
    side = sc["records"][idx[0]][0]
    rows: list[dict[str, Any]] = []
    tomb = any(r.row is None for r in recs)
    names = list(dict.fromkeys(n for r in recs if r.row is not None for n in r.row))
    for r in recs:
        # from_pylist takes its columns from the first row: give every row every column.
        row = {n: (r.row or {}).get(n) for n in names}
        if tomb:
            row["__tombstone"] = r.row is None
        rows.append(row)
    schema = None
    if sc["declared"]:
        declared = _schemas(sc)[0 if side == "left" else 1]
        fields = [f for f in declared if any(f.name in row for row in rows)]
        schema = pa.schema([*fields, *([("__tombstone", pa.bool_())] if tomb else [])])
    return Batch.from_rows(
        rows,
        keys=pa.array([r.key for r in recs], sc["key_type"]),
        timestamps=[r.ts for r in recs],
        offsets=[r.offset for r in recs],
        schema=schema,
    )


def _names(batch: Batch | None) -> tuple[list[str], dict[str, str]]:
    """Result column names. With learned schemas a side's columns appear once it was seen, and
    the right "sx" is renamed only when the left side's "sx" is in the result."""
    columns = [] if batch is None else batch.data.schema.names
    left = LEFT_NAMES if "lo" in columns else []
    return left, RIGHT_COLUMNS if "right_sx" in columns or left else {"v": "v", "sx": "sx"}


def _run_impl(
    spec: BinaryOperatorSpec, sc: dict[str, Any], snapshot_at: int | None = None, **kw: Any
) -> list[tuple[list[Out], list[int]]]:
    op: BinaryOperator = spec.build("join")
    steps = [*sc["steps"], *([("wm", 10**6)] if kw.get("final_wm") else [])]
    result = []
    for i, (what, arg) in enumerate(steps):
        if snapshot_at is not None and i == snapshot_at:
            state = pickle.loads(pickle.dumps(op.snapshot()))
            op = spec.build("join")
            op.restore(state)
        res = op.on_watermark(arg) if what == "wm" else op.process_side(what, _batch(sc, arg))
        assert len(res) == op.ports
        late = res[1] if op.ports == 2 else None
        result.append(
            (
                outs(res[0], *_names(res[0]), kw.get("changelog", False)),
                [] if late is None else late.offsets.to_pylist(),
            )
        )
        if kw.get("check") is not None:
            kw["check"](op)
    if kw.get("check_end") is not None:
        kw["check_end"](op)
    return result


def _run_ref(ref: Any, sc: dict[str, Any], final_wm: bool = False) -> list[tuple[list[Out], Any]]:
    steps = [*sc["steps"], *([("wm", 10**6)] if final_wm else [])]
    result: list[tuple[list[Out], Any]] = []
    for what, arg in steps:
        if what == "wm":
            rows, late = ref.on_watermark(arg), []
        else:
            recs = [sc["records"][i][1] for i in arg]
            got = ref.process(what, recs) if hasattr(ref, "process") else getattr(ref, what)(recs)
            rows, late = got if isinstance(got, tuple) else (got, [])
        result.append((norm_outs(rows, LEFT_NAMES, RIGHT_NAMES), late))
    return result


def _spec_schemas(sc: dict[str, Any]) -> dict[str, Any]:
    left, right = _schemas(sc)
    return {"left": left, "right": right} if sc["declared"] else {"left": None, "right": None}


# -- stream-table and global-table ------------------------------------------------------------


@pytest.mark.parametrize("how", ["inner", "left"])
@SETTINGS
@given(data=st.data())
def test_stream_table_equals_reference(how: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios())
    spec = StreamTableJoinSpec(how=how, right_schema=_spec_schemas(sc)["right"])
    expected = _run_ref(RefLookupJoin(how), sc)
    assert _run_impl(spec, sc) == expected
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"]) == expected


@pytest.mark.parametrize("how", ["inner", "left"])
@SETTINGS
@given(data=st.data())
def test_global_table_equals_reference(how: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios())
    spec = GlobalTableJoinSpec(on="gk", how=how, right_schema=_spec_schemas(sc)["right"])
    expected = _run_ref(RefLookupJoin(how, on="gk"), sc)
    assert _run_impl(spec, sc) == expected
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"]) == expected


# -- materialiser ------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_table_materialiser_equals_reference(data: st.DataObject) -> None:
    sc = data.draw(scenarios(tombstones="both", side_pool=("right",)))
    batches = [idx for what, idx in sc["steps"]]
    spec = TableSpec(value_schema=_spec_schemas(sc)["right"])
    op: TableOperator = spec.build("table")
    ref = RefTable()
    for i, idx in enumerate(batches):
        if i == sc["snapshot_at"]:
            state = pickle.loads(pickle.dumps(op.snapshot()))
            op = spec.build("table")
            op.restore(state)
        (res,) = op.process(_batch(sc, idx))
        expected = [
            (k, t, o, norm(row, RIGHT_NAMES), dead)
            for k, t, o, row, dead in materialise(ref, [sc["records"][i][1] for i in idx])
        ]
        got = (
            []
            if res is None
            else [
                (k, t, o, norm(row, RIGHT_NAMES), row["__tombstone"])
                for row, k, t, o in zip(
                    res.data.to_pylist(),
                    res.keys.to_pylist(),
                    res.timestamps.to_pylist(),
                    res.offsets.to_pylist(),
                    strict=True,
                )
            ]
        )
        assert got == expected
    current = {r["key"]: norm(r, RIGHT_NAMES) for r in op.to_arrow().to_pylist()}
    assert current == {k: norm(row, RIGHT_NAMES) for k, (row, _) in ref.data.items()}


# -- versioned ---------------------------------------------------------------------------------


def _check_pruned(op: VersionedTableJoinOperator) -> None:
    horizon = op.horizon
    if horizon is None:
        assert len(op.store) == 0
        return
    for key, history in op.store.items():
        assert history, key
        assert all(history[i + 1][0] > horizon for i in range(len(history) - 1)), history
        assert not (history[0][1] is None and history[0][0] <= horizon), history


@pytest.mark.parametrize("how", ["inner", "left"])
@SETTINGS
@given(data=st.data(), retention=st.integers(0, 25))
def test_versioned_equals_reference(how: str, data: st.DataObject, retention: int) -> None:
    sc = data.draw(scenarios(null_ts=True))
    spec = VersionedTableJoinSpec(retention, how=how, right_schema=_spec_schemas(sc)["right"])
    expected = _run_ref(RefVersionedJoin(how, retention), sc)
    assert _run_impl(spec, sc, check=_check_pruned) == expected
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"], check=_check_pruned) == expected


# -- table-table -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@SETTINGS
@given(data=st.data())
def test_table_table_equals_reference(how: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(tombstones="both"))
    schemas = _spec_schemas(sc)
    spec = TableTableJoinSpec(how, left_schema=schemas["left"], right_schema=schemas["right"])
    expected = _run_ref(RefTableTableJoin(how), sc)
    assert _run_impl(spec, sc, changelog=True) == expected
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"], changelog=True) == expected
    # Applying the changelog gives the join of the final tables.
    view: dict[Any, Any] = {}
    for rows, _ in expected:
        for key, _, _, left, right, dead in rows:
            if dead:
                del view[key]
            else:
                view[key] = (left, right)
    ref = RefTableTableJoin(how)
    for what, idx in sc["steps"]:
        ref.changes(what, [sc["records"][i][1] for i in idx])
    left, right = ref.tables["left"].data, ref.tables["right"].data
    assert view == {
        k: (
            norm(left[k][0] if k in left else None, LEFT_NAMES),
            norm(right[k][0] if k in right else None, RIGHT_NAMES),
        )
        for k in {*left, *right}
        if ref._exists(left.get(k), right.get(k))
    }


# -- stream-stream -----------------------------------------------------------------------------


def _sorted(result: list[tuple[list[Out], list[int]]]) -> list[tuple[list[Out], list[int]]]:
    return [(sorted(rows, key=repr), sorted(late)) for rows, late in result]


def _bounded(op: StreamStreamJoinOperator) -> None:
    """Every buffered record can still be matched: nothing is kept past its retention."""
    span = op.before + op.after + 1 + op.grace
    assert op.watermark is not None or op.buffered() == 0
    for store in op.buffers.values():
        assert all(entry[0] + span > op.watermark for _, entry in store.items())
    assert len(op._due) == op.buffered()
    assert sum(len(s) for index in op._index.values() for s in index.values()) == op.buffered()


def _empty(op: StreamStreamJoinOperator) -> None:
    assert op.buffered() == 0
    assert len(op._due) == 0
    assert op._index == {"left": {}, "right": {}}


@st.composite
def windows(draw: st.DrawFn) -> dict[str, int]:
    return {
        "before": draw(st.integers(0, 8)),
        "after": draw(st.integers(0, 8)),
        "grace": draw(st.integers(0, 6)),
        "ooo": draw(st.integers(0, 4)),
    }


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@SETTINGS
@given(data=st.data(), w=windows())
def test_stream_stream_equals_reference(how: str, data: st.DataObject, w: dict[str, int]) -> None:
    sc = data.draw(scenarios(tombstones="none", null_ts=True, watermarks=True))
    schemas = _spec_schemas(sc)
    spec = StreamStreamJoinSpec(
        w["before"],
        w["after"],
        w["grace"],
        w["ooo"],
        how,
        left_schema=schemas["left"],
        right_schema=schemas["right"],
    )
    ref = RefStreamStreamJoin(how, w["before"], w["after"], w["grace"], w["ooo"])
    expected = _sorted(_run_ref(ref, sc, final_wm=True))
    got = _sorted(_run_impl(spec, sc, final_wm=True, check=_bounded, check_end=_empty))
    assert got == expected
    # Each pair once; each left (outer: each) on-time record that never matched once, with nulls.
    rows = [r for step, _ in got for r in step]
    pairs = Counter((r[3]["lo"], r[4]["v"]) for r in rows if r[3] and r[4])
    assert all(c == 1 for c in pairs.values())
    paired = {o for pair in pairs for o in pair}
    single = Counter((r[3] or r[4])["lo" if r[3] else "v"] for r in rows if not (r[3] and r[4]))
    assert all(c == 1 for c in single.values())
    assert not paired & set(single)
    late = {o for _, step_late in got for o in step_late}
    assert not late & (paired | set(single))
    if how == "outer":
        on_time = {
            r.offset
            for _, r in sc["records"]
            if r.key is not None and r.ts is not None and r.offset not in late
        }
        assert paired | set(single) == on_time


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@FEW
@given(data=st.data(), w=windows())
def test_stream_stream_snapshot_restore_changes_nothing(
    how: str, data: st.DataObject, w: dict[str, int]
) -> None:
    sc = data.draw(scenarios(tombstones="none", null_ts=True, watermarks=True))
    spec = StreamStreamJoinSpec(w["before"], w["after"], w["grace"], w["ooo"], how)
    plain = _run_impl(spec, sc, final_wm=True)
    assert _run_impl(spec, sc, snapshot_at=sc["snapshot_at"], final_wm=True) == plain


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@FEW
@given(data=st.data(), w=windows())
def test_stream_stream_does_not_depend_on_batch_boundaries(
    how: str, data: st.DataObject, w: dict[str, int]
) -> None:
    sc = data.draw(scenarios(tombstones="none"))
    spec = StreamStreamJoinSpec(w["before"], w["after"], w["grace"], w["ooo"], how)
    # The same arrival order, one record per call.
    single = dict(sc, steps=[(side, [i]) for side, idx in sc["steps"] for i in idx])

    def flat(result: list[tuple[list[Out], list[int]]]) -> tuple[list[Out], list[int]]:
        return (
            sorted((r for rows, _ in result for r in rows), key=repr),
            sorted(o for _, late in result for o in late),
        )

    assert flat(_run_impl(spec, sc, final_wm=True)) == flat(_run_impl(spec, single, final_wm=True))
