"""Keyed process functions on Arrow batches: state, timers, outputs, failures (no broker)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pyarrow as pa
import pytest

import raystream as rs
from raystream.errors import OperatorContractError, TopologyError
from raystream.operators.base import Batch, RecordFailure, TaskContext
from raystream.operators.process import ProcessOperator, ProcessSpec
from raystream.operators.timers import TimerQueue
from raystream.operators.windows_common import MIN_TIME

EV = rs.TimeDomain.EVENT_TIME
PT = rs.TimeDomain.PROCESSING_TIME


class Harness:
    """A process operator with a fake clock and a list of reported failures."""

    def __init__(self, function: Any, **kw: Any) -> None:
        self.now = 0
        self.failures: list[RecordFailure] = []
        self.op = ProcessSpec.of(function, **kw).build("proc")
        assert isinstance(self.op, ProcessOperator)
        self.op.open(
            TaskContext(
                "app", "0_0", 0, report_failure=self.failures.append, clock_ms=lambda: self.now
            )
        )

    def feed(
        self, rows: list[dict[str, Any]], keys: list[Any], ts: list[int], start: int = 0
    ) -> list[list[tuple[Any, Any, int, Any]]]:
        batch = Batch.from_rows(rows, keys, ts, list(range(start, start + len(rows))))
        return _records(self.op.process(batch))

    def watermark(self, wm: int) -> list[list[tuple[Any, Any, int, Any]]]:
        return _records(self.op.on_watermark(wm))

    def tick(self, now: int) -> list[list[tuple[Any, Any, int, Any]]]:
        self.now = now
        return _records(self.op.on_processing_time(now))


def _records(out: Any) -> list[list[tuple[Any, Any, int, Any]]]:
    """Per port: (value, key, timestamp, offset) of every record."""
    result = []
    for b in out:
        if b is None:
            result.append([])
            continue
        assert b.data.num_rows == len(b.keys)
        result.append(
            list(
                zip(
                    b.rows(),
                    b.keys.to_pylist(),
                    b.timestamps.to_pylist(),
                    b.offsets.to_pylist(),
                    strict=True,
                )
            )
        )
    return result


class Counter(rs.ProcessFunction):
    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        ctx.state.setdefault("seen", []).append(value["v"])  # in place: still saved
        ctx.emit({"n": ctx.state["n"], "seen": list(ctx.state["seen"])})


def test_state_is_per_key_and_survives_batches() -> None:
    h = Harness(Counter)
    out = h.feed([{"v": 1}, {"v": 2}, {"v": 3}], ["a", "b", "a"], [10, 11, 12])
    assert out == [
        [
            ({"n": 1, "seen": [1]}, "a", 10, 0),
            ({"n": 1, "seen": [2]}, "b", 11, 1),
            ({"n": 2, "seen": [1, 3]}, "a", 12, 2),
        ]
    ]
    out = h.feed([{"v": 4}], ["b"], [13], start=3)
    assert out == [[({"n": 2, "seen": [2, 4]}, "b", 13, 3)]]
    assert h.op.key_state("a") == {"n": 2, "seen": [1, 3]}
    assert h.op.states.dirty_keys() == {"a", "b"}


def test_clearing_state_forgets_the_key() -> None:
    def fn(ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        if value["op"] == "set":
            ctx.state["x"] = value["x"]
        else:
            ctx.state.clear()
        ctx.emit({"x": ctx.state.get("x")})

    h = Harness(fn)
    out = h.feed([{"op": "set", "x": 1}, {"op": "clear", "x": 0}], ["k", "k"], [1, 2])
    assert [r[0] for r in out[0]] == [{"x": 1}, {"x": None}]
    assert "k" not in h.op.states
    assert h.op.states.dirty_keys() == {"k"}


def test_reading_state_without_changing_it_does_not_dirty_the_key() -> None:
    h = Harness(lambda ctx, key, value: ctx.emit({"n": ctx.state.get("n", 0)}))
    h.feed([{"a": 1}], ["k"], [1])
    assert h.op.states.dirty_keys() == frozenset()
    missing = Harness(lambda ctx, key, value: ctx.state["nope"])
    missing.feed([{"x": 0}], ["k"], [0])
    assert "ctx.state.get('nope', default)" in missing.failures[0].message


class Timeouts(rs.ProcessFunction):
    """Registers an event-time timer at ``ts + value["after"]``; timers emit what fired."""

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        ctx.timers.register_event_time(ctx.timestamp + value["after"])
        ctx.emit({"rec": value["after"], "wm": ctx.watermark})

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        ctx.emit({"fired": timestamp, "domain": str(domain), "wm": ctx.watermark})


def test_event_time_timers_fire_in_order_once_the_watermark_passes_them() -> None:
    h = Harness(Timeouts, out_of_orderness=5)
    out = h.feed(
        [{"after": 30}, {"after": 10}, {"after": 10}, {"after": 0}],
        ["a", "b", "c", "a"],
        [100, 100, 105, 140],
    )
    # b's timer (110), c's (115) and a's (130) fire right after the record at 140 moved the
    # watermark to 135, in time order; a's second timer (140) waits for the watermark. A record
    # sees the watermark before it (MIN_TIME before the first record).
    assert [(_set(r[0]), r[1], r[2]) for r in out[0]] == [
        ({"rec": 30, "wm": MIN_TIME}, "a", 100),
        ({"rec": 10, "wm": 95}, "b", 100),
        ({"rec": 10, "wm": 95}, "c", 105),
        ({"rec": 0, "wm": 100}, "a", 140),
        ({"fired": 110, "domain": "event_time", "wm": 135}, "b", 110),
        ({"fired": 115, "domain": "event_time", "wm": 135}, "c", 115),
        ({"fired": 130, "domain": "event_time", "wm": 135}, "a", 130),
    ]
    assert [r[3] for r in out[0]] == [0, 1, 2, 3, None, None, None]  # timer records: no offset
    assert h.op.pending_timers(EV) == [(140, "a")]
    assert h.watermark(139) == [[]]
    assert h.watermark(140)[0][0][0]["fired"] == 140
    assert h.op.pending_timers(EV) == []


def _set(value: dict[str, Any]) -> dict[str, Any]:
    """The fields that are set (records of one output share the union of all fields)."""
    return {k: v for k, v in value.items() if v is not None}


def test_end_of_input_fires_every_event_time_timer() -> None:
    h = Harness(Timeouts)
    h.feed([{"after": 10_000}, {"after": 50}], ["a", "b"], [0, 0])
    fired = [r[0]["fired"] for r in h.watermark(1 << 62)[0]]
    assert fired == [50, 10_000]


def test_results_do_not_depend_on_batch_boundaries() -> None:
    rng = random.Random(7)
    n = 200
    rows = [{"after": rng.randint(0, 50)} for _ in range(n)]
    keys = [f"k{rng.randint(0, 5)}" for _ in range(n)]
    ts = [i * 10 + rng.randint(-20, 20) for i in range(n)]

    def run(cuts: list[int]) -> list[Any]:
        h = Harness(Timeouts, out_of_orderness=15)
        got: list[Any] = []
        bounds = [0, *cuts, n]
        for lo, hi in itertools.pairwise(bounds):
            got += h.feed(rows[lo:hi], keys[lo:hi], ts[lo:hi], start=lo)[0]
        got += h.watermark(1 << 62)[0]
        return [(_set(v), *rest) for v, *rest in got]

    whole = run([])
    assert len(whole) > 1.9 * n  # a timer per record, but equal (key, time) ones are merged
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, n), rng.randint(1, 30)))
        assert run(cuts) == whole


def test_timers_are_deduplicated_and_can_be_deleted() -> None:
    class Fn(rs.ProcessFunction):
        def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
            for t in value.get("reg", []):
                ctx.timers.register_event_time(t)
            for t in value.get("del", []):
                ctx.timers.delete_event_time(t)

        def on_timer(
            self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
        ) -> None:
            ctx.emit({"t": timestamp})

    h = Harness(Fn)
    h.feed(
        [
            {"reg": [50, 50, 60, 70], "del": []},
            {"reg": [50], "del": [60]},
            {"reg": [], "del": [70]},
            {"reg": [70], "del": [99]},  # re-registered after its delete
        ],
        ["a", "a", "a", "a"],
        [0, 0, 0, 0],
    )
    assert h.op.pending_timers(EV) == [(50, "a"), (70, "a")]
    assert [(r[0]["t"], r[1]) for r in h.watermark(100)[0]] == [(50, "a"), (70, "a")]


def test_timers_of_equal_time_fire_in_registration_order() -> None:
    h = Harness(Timeouts)
    h.feed([{"after": 5}] * 3, ["z", "a", "m"], [0, 0, 0])
    assert [r[1] for r in h.watermark(5)[0]] == ["z", "a", "m"]


class Chain(rs.ProcessFunction):
    """A processing-time timer every ``every`` ms, ``left`` times: timers registered by timers."""

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        ctx.state["left"] = value["times"]
        ctx.timers.register_processing_time(ctx.processing_time + value["every"])
        ctx.state["every"] = value["every"]

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        assert domain is rs.TimeDomain.PROCESSING_TIME
        ctx.state["left"] -= 1
        ctx.emit({"at": timestamp, "now": ctx.processing_time, "left": ctx.state["left"]})
        if ctx.state["left"]:
            ctx.timers.register_processing_time(timestamp + ctx.state["every"])


def test_processing_time_timers_fire_on_the_clock_and_can_register_more() -> None:
    h = Harness(Chain)
    h.now = 1000
    assert h.feed([{"times": 3, "every": 100}], ["k"], [0]) == [[]]
    assert h.tick(1099) == [[]]
    out = h.tick(1150)[0]
    assert [(r[0], r[1], r[2]) for r in out] == [({"at": 1100, "now": 1150, "left": 2}, "k", 1100)]
    # 1200 and 1300 are both due at 1350, but 1300 was registered by 1200's callback: next tick.
    assert [r[0]["at"] for r in h.tick(1350)[0]] == [1200]
    assert [r[0]["at"] for r in h.tick(1350)[0]] == [1300]
    assert h.tick(5000) == [[]]
    assert h.op.pending_timers(PT) == []


def test_processing_time_timers_are_checked_after_each_batch() -> None:
    h = Harness(Chain)
    h.now = 0
    h.feed([{"times": 1, "every": 10}], ["k"], [0])
    h.now = 50
    out = h.feed([{"times": 1, "every": 1000}], ["other"], [0])
    assert [r[0]["at"] for r in out[0]] == [10]


def test_a_timer_reregistering_itself_when_due_does_not_loop() -> None:
    class Again(rs.ProcessFunction):
        def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
            ctx.timers.register_processing_time(0)

        def on_timer(
            self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
        ) -> None:
            ctx.emit({"t": timestamp})
            ctx.timers.register_processing_time(timestamp)  # already due

    h = Harness(Again)
    h.now = 10
    assert len(h.feed([{"x": 0}], ["k"], [0])[0]) == 1
    assert len(h.tick(10)[0]) == 1
    assert len(h.tick(10)[0]) == 1


def test_outputs_are_ports_by_name_or_index() -> None:
    def saga(ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        ctx.emit({"pay": value["amount"]}, to="payments", key=f"pay-{key}")
        ctx.emit({"reserve": value["sku"]}, to=1, timestamp=ctx.timestamp + 1)
        if value["amount"] > 100:
            ctx.emit({"why": "big"}, to="audit")

    h = Harness(saga, outputs=("payments", "inventory", "audit"))
    assert h.op.ports == 3
    out = h.feed([{"amount": 5, "sku": "x"}, {"amount": 500, "sku": "y"}], ["o1", "o2"], [10, 20])
    assert out == [
        [({"pay": 5}, "pay-o1", 10, 0), ({"pay": 500}, "pay-o2", 20, 1)],
        [({"reserve": "x"}, "o1", 11, 0), ({"reserve": "y"}, "o2", 21, 1)],
        [({"why": "big"}, "o2", 20, 1)],
    ]


@pytest.mark.parametrize(
    ("to", "message"),
    [(None, "say which one"), ("nope", "no such output"), (3, "no such output")],
)
def test_emitting_to_an_unknown_output_is_a_record_failure(to: Any, message: str) -> None:
    h = Harness(lambda ctx, k, v: ctx.emit({"a": 1}, to=to), outputs=("a", "b"))
    assert h.feed([{"x": 0}], ["k"], [0]) == [[], []]
    assert len(h.failures) == 1 and message in h.failures[0].message


class Fragile(rs.ProcessFunction):
    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        ctx.state.setdefault("log", []).append(value["v"])
        ctx.state["total"] = ctx.state.get("total", 0) + value["v"]
        ctx.timers.register_event_time(1000 + value["v"])
        ctx.emit({"total": ctx.state["total"]})
        if value["v"] < 0:
            raise ValueError("negative amount")

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        ctx.state["fired"] = timestamp
        ctx.emit({"fired": timestamp})
        if ctx.state["total"] > 100:
            raise RuntimeError("cannot compensate")


def test_a_failing_record_is_reported_and_changes_nothing() -> None:
    h = Harness(Fragile)
    out = h.feed([{"v": 5}, {"v": -1}, {"v": 7}], ["a", "a", "a"], [0, 1, 2], start=40)
    assert [r[0] for r in out[0]] == [{"total": 5}, {"total": 12}]
    assert h.op.key_state("a") == {"log": [5, 7], "total": 12}
    assert h.op.pending_timers(EV) == [(1005, "a"), (1007, "a")]  # not 999
    [f] = h.failures
    assert (f.operator, f.offset, f.key) == ("proc", 41, "a")
    assert f.error_class == "builtins.ValueError" and f.message == "negative amount"


def test_a_failing_timer_is_counted_spent_and_changes_nothing() -> None:
    h = Harness(Fragile)
    h.feed([{"v": 200}, {"v": 1}], ["big", "small"], [0, 0])
    out = h.watermark(2000)[0]
    assert [(r[0], r[1]) for r in out] == [({"fired": 1001}, "small")]
    assert h.op.key_state("big") == {"log": [200], "total": 200}
    assert h.op.failed_timers == 1
    [f] = h.failures
    assert (
        f.offset is None and f.key == "big" and f.value == {"timer": 1200, "domain": "event_time"}
    )
    assert h.op.pending_timers(EV) == []


def test_plain_functions_and_their_contract() -> None:
    seen: list[tuple[Any, int, rs.TimeDomain]] = []
    h = Harness(
        lambda ctx, key, value: ctx.timers.register_event_time(ctx.timestamp + 1),
        on_timer=lambda ctx, key, ts, domain: seen.append((key, ts, domain)),
    )
    h.feed([{"x": 0}], [b"k"], [10])
    h.watermark(11)
    assert seen == [(b"k", 11, EV)]

    no_timer = Harness(lambda ctx, key, value: ctx.timers.register_event_time(5))
    no_timer.feed([{"x": 0}], ["k"], [0])
    assert "on_timer" in no_timer.failures[0].message
    assert no_timer.op.pending_timers(EV) == []

    returns = Harness(lambda ctx, key, value: {"oops": 1})
    returns.feed([{"x": 0}], ["k"], [0])
    assert "ctx.emit" in returns.failures[0].message


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ctx: ctx.emit([1]), "dict value"),
        (lambda ctx: ctx.emit({}, timestamp="now"), "timestamp="),
        (lambda ctx: ctx.emit({}, key=[1]), "scalar key"),
        (lambda ctx: ctx.timers.register_processing_time(1.5), "int milliseconds"),
    ],
)
def test_misuse_of_the_context_is_a_record_failure(call: Any, message: str) -> None:
    h = Harness(lambda ctx, key, value: call(ctx), on_timer=lambda *a: None)
    assert h.feed([{"x": 0}], ["k"], [0]) == [[]]
    assert message in h.failures[0].message
    assert h.failures[0].error_class.endswith("OperatorContractError")


def test_null_keys_are_skipped_and_counted() -> None:
    h = Harness(Counter)
    out = h.feed([{"v": 1}, {"v": 2}], [None, "a"], [0, 1])
    assert [r[1] for r in out[0]] == ["a"]
    assert h.op.dropped_null_keys == 1


def test_emitted_keys_keep_the_input_type_or_fall_back_to_bytes() -> None:
    h = Harness(lambda ctx, key, value: ctx.emit({}, key=value["k"] or value["s"]))
    rows = [{"k": 1, "s": None}, {"k": 2, "s": None}]
    [out] = h.op.process(Batch.from_rows(rows, pa.array([1, 2], pa.int32()), [0, 0]))
    assert out is not None and out.keys.type == pa.int32() and out.num_rows == 2
    rows = [{"k": 1, "s": None}, {"k": None, "s": "x"}]
    [mixed] = h.op.process(Batch.from_rows(rows, [1, 2], [0, 0]))
    assert mixed is not None and mixed.keys.to_pylist() == [b"1", b"x"]


def test_records_of_different_shapes_share_one_output() -> None:
    shapes: list[dict[str, Any]] = [{"a": 1}, {"b": "x"}, {}]
    h = Harness(lambda ctx, key, value: ctx.emit(shapes[value["i"]]))
    out = h.feed([{"i": 0}, {"i": 1}, {"i": 2}], ["k", "k", "k"], [0, 0, 0])
    assert [r[0] for r in out[0]] == [
        {"a": 1, "b": None},
        {"a": None, "b": "x"},
        {"a": None, "b": None},
    ]
    bad = Harness(lambda ctx, key, value: ctx.emit({"a": value["a"] or value["b"]}))
    with pytest.raises(OperatorContractError, match="different kinds of records"):
        bad.feed([{"a": 1, "b": None}, {"a": None, "b": "x"}], ["k", "k"], [0, 0])


def test_snapshot_and_restore_round_trip() -> None:
    h = Harness(Timeouts, out_of_orderness=5)
    h.feed([{"after": 10}, {"after": 500}], ["a", "b"], [100, 100])
    snap = h.op.snapshot()
    h2 = Harness(Timeouts, out_of_orderness=5)
    h2.op.restore(snap)
    assert h2.op.watermark == 95 and h2.op.pending_timers(EV) == h.op.pending_timers(EV)
    h3 = Harness(Timeouts, out_of_orderness=5)
    stores = [list(s.items()) for s in h.op.state_stores()]
    h3.op.restore(h.op.snapshot(with_stores=False), stores=stores)
    want = h.watermark(600)
    assert [r[0]["fired"] for r in want[0]] == [110, 600]
    assert h2.watermark(600) == want and h3.watermark(600) == want
    with pytest.raises(TopologyError, match="process operator"):
        h3.op.restore({"not": "mine"})


def test_instances_are_copied_per_task_and_classes_instantiated() -> None:
    class Tagged(rs.ProcessFunction):
        def __init__(self, tag: str = "default") -> None:
            self.tag = tag
            self.calls = 0

        def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
            self.calls += 1
            ctx.emit({"tag": self.tag})

    proto = Tagged("custom")
    h1, h2 = Harness(proto), Harness(proto)
    h1.feed([{"x": 0}], ["k"], [0])
    assert h1.op.fn is not proto and h1.op.fn is not h2.op.fn and proto.calls == 0
    assert Harness(Tagged).feed([{"x": 0}], ["k"], [0]) == [[({"tag": "default"}, "k", 0, 0)]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"function": 3}, "ProcessFunction subclass"),
        ({"function": dict}, "must subclass"),
        ({"function": Counter, "on_timer": print}, "plain functions"),
        ({"function": print, "on_timer": 3}, "expects a function"),
        ({"function": print, "outputs": "payments"}, "tuple of output names"),
        ({"function": print, "outputs": ("a", "a")}, "unique"),
        ({"function": print, "outputs": ()}, "non-empty"),
    ],
)
def test_bad_arguments_fail_when_the_topology_is_built(
    kwargs: dict[str, Any], message: str
) -> None:
    app = rs.App("p", brokers="unused:1")
    with pytest.raises(TopologyError, match=message):
        app.stream("in", key="id").process(**kwargs)


def test_stream_process_returns_one_stream_or_one_per_output() -> None:
    app = rs.App("p", brokers="unused:1")
    s = app.stream("in", key="id")
    one = s.process(Counter, name="count")
    assert isinstance(one, rs.Stream)
    a, b = s.process(Timeouts, outputs=("a", "b"))
    assert (a._node, a._port, b._port) == (b._node, 0, 1)
    assert app._graph.names[one._node] == "count"


def test_deleted_timers_do_not_pile_up_in_memory() -> None:
    q = TimerQueue()
    for i in range(5000):
        q.register("k", 10_000 + i, PT)
        q.delete("k", 10_000 + i, PT)
    q.register("k", 5, PT)
    assert len(q._heaps[PT]) < 2100
    assert list(q.due(PT, 1 << 62)) == [(5, "k")]
