"""Joins wired through the topology API and the task runtime (no broker): every join kind, tables
with tombstones, global tables in every task, co-partitioning and repartitioning, bad input."""

from __future__ import annotations

import pyarrow as pa
import pytest

import raystream as rs
from raystream.errors import TopologyError
from raystream.testing import TopologyTestDriver

PROFILE = pa.schema([("customer_id", pa.string()), ("segment", pa.string())])


def enrich_app(how: str = "inner") -> rs.App:
    app = rs.App("j", brokers="unused:1")
    payments = app.stream("payments", key="customer_id", time="ts")
    customers = app.table("customers", key="customer_id", value=rs.JSON(PROFILE))
    payments.join(customers, how=how).to("enriched")
    return app


def test_stream_table_join_sees_the_table_as_of_each_record() -> None:
    d = TopologyTestDriver(enrich_app("left"))
    d.pipe("customers", [{"customer_id": "a", "segment": "retail"}], keys=["a"])
    d.pipe("payments", [{"customer_id": "a", "ts": 1, "amount": 5}])
    d.pipe("payments", [{"customer_id": "b", "ts": 2, "amount": 6}])
    d.pipe("customers", [{"customer_id": "a", "segment": "premium"}], keys=["a"])
    d.pipe("payments", [{"customer_id": "a", "ts": 3, "amount": 7}])
    d.pipe("customers", [None], keys=["a"])  # tombstone: deletes a
    d.pipe("payments", [{"customer_id": "a", "ts": 4, "amount": 8}])
    out = d.read("enriched")
    assert [(r.key, r.timestamp) for r in out] == [(b"a", 1), (b"b", 2), (b"a", 3), (b"a", 4)]
    assert [(r.json()["amount"], r.json()["segment"]) for r in out] == [
        (5, "retail"),
        (6, None),
        (7, "premium"),
        (8, None),
    ]
    # The clashing right column is renamed, the stream's own is kept.
    assert out[0].json()["right_customer_id"] == "a"


def test_inner_stream_table_join_drops_records_without_a_match() -> None:
    d = TopologyTestDriver(enrich_app("inner"))
    d.pipe(
        "customers",
        [{"customer_id": "a", "segment": "x"}, None, {"customer_id": "c", "segment": "z"}],
        keys=["a", "c", "c"],  # the tombstone for c comes before c's value: c stays
    )
    d.pipe("payments", [{"customer_id": k, "ts": i} for i, k in enumerate("abc")])
    assert [r.json()["customer_id"] for r in d.read("enriched")] == ["a", "c"]


def test_tombstones_and_values_of_one_batch_apply_in_offset_order() -> None:
    d = TopologyTestDriver(enrich_app("left"))
    d.pipe(
        "customers",
        [{"customer_id": "a", "segment": "x"}, None, {"customer_id": "b", "segment": "y"}],
        keys=["a", "a", "b"],
    )
    d.pipe("payments", [{"customer_id": "a", "ts": 1}, {"customer_id": "b", "ts": 2}])
    assert [r.json()["segment"] for r in d.read("enriched")] == [None, "y"]


def test_a_poison_table_record_is_dead_lettered_and_the_table_goes_on() -> None:
    d = TopologyTestDriver(enrich_app("left"))
    d.pipe(
        "customers",
        [b"{not json", {"customer_id": "a", "segment": "x"}],
        keys=["z", "a"],
    )
    dlq = d.read("customers.dlq")
    assert [(r.value, r.headers["rs.source.offset"]) for r in dlq] == [(b"{not json", "0")]
    d.pipe("payments", [{"customer_id": "a", "ts": 1}])
    assert [r.json()["segment"] for r in d.read("enriched")] == ["x"]


def test_global_table_is_complete_in_every_task() -> None:
    app = rs.App("g", brokers="unused:1")
    merchants = app.global_table("merchants", key="merchant_id")
    app.stream("payments", key="customer_id").join(merchants, on="merchant_id").to("out")
    d = TopologyTestDriver(app, partitions=2)
    d.pipe("merchants", [{"merchant_id": "m1", "category": "fuel"}], keys=["m1"], partition=1)
    d.pipe("merchants", [{"merchant_id": "m2", "category": "food"}], keys=["m2"], partition=0)
    d.pipe("payments", [{"customer_id": "a", "merchant_id": "m1"}], partition=0)
    d.pipe("payments", [{"customer_id": "b", "merchant_id": "m2"}], partition=1)
    d.pipe("payments", [{"customer_id": "c", "merchant_id": "m9"}], partition=1)
    got = sorted((r.json()["customer_id"], r.json()["category"]) for r in d.read("out"))
    assert got == [("a", "fuel"), ("b", "food")]
    assert app.plan().subtopologies[0].global_topics == ("merchants",)
    assert app.plan().subtopologies[0].source_topics == ("payments",)


def test_a_poison_global_record_is_dead_lettered_once_not_once_per_task() -> None:
    app = rs.App("g", brokers="unused:1")
    merchants = app.global_table("merchants", key="merchant_id")
    app.stream("payments", key="customer_id").join(merchants, on="merchant_id").to("out")
    d = TopologyTestDriver(app, partitions=3)
    d.pipe("merchants", [b"\xff", {"merchant_id": "m1"}], keys=["m0", "m1"], partition=2)
    dlq = d.read("merchants.dlq")
    assert len(dlq) == 1
    assert dlq[0].headers["rs.source.partition"] == "2"


def test_global_join_with_a_key_function_dead_letters_a_raising_record() -> None:
    app = rs.App("g", brokers="unused:1")
    merchants = app.global_table("merchants", key="merchant_id")
    stream = app.stream("payments", key="customer_id")
    stream.join(merchants, on=lambda r: "m" + r["merchant"], how="left").to("out")
    d = TopologyTestDriver(app)
    d.pipe("merchants", [{"merchant_id": "m1", "category": "fuel"}], keys=["m1"])
    d.pipe("payments", [{"customer_id": "a", "merchant": "1"}, {"customer_id": "b"}])
    assert [r.json()["category"] for r in d.read("out")] == ["fuel"]
    assert [r.headers["rs.error.class"] for r in d.read("payments.dlq")] == ["builtins.TypeError"]


def test_stream_stream_join_within_a_window_and_late_records() -> None:
    app = rs.App("ss", brokers="unused:1")
    orders = app.stream("orders", key="order_id", time="ts")
    paid = app.stream("payments", key="order_id", time="ts")
    orders.join(paid, window="30m", grace="1m", how="left").to("matched")
    d = TopologyTestDriver(app)
    minute = 60_000
    d.pipe("orders", [{"order_id": "o1", "ts": 0}, {"order_id": "o2", "ts": minute}])
    d.pipe("payments", [{"order_id": "o1", "ts": 10 * minute, "paid": 5}])
    d.pipe("payments", [{"order_id": "o2", "ts": 40 * minute, "paid": 6}])  # 39 min: too far
    out = d.read("matched")
    assert [(r.json()["order_id"], r.json()["paid"]) for r in out] == [("o1", 5)]
    # The watermark passes o2's window end + grace: left join emits it without a partner.
    d.pipe("orders", [{"order_id": "o3", "ts": 100 * minute}])
    assert [(r.json()["order_id"], r.json()["paid"]) for r in d.read("matched")] == [("o2", None)]
    d.pipe("payments", [{"order_id": "o1", "ts": 0, "paid": 1}])  # far behind: late
    late = d.read("ss.late")
    assert [r.json() for r in late] == [{"order_id": "o1", "ts": 0, "paid": 1}]
    assert late[0].headers["rs.operator"].startswith("stream_stream_join")


def test_versioned_join_uses_the_value_valid_at_event_time() -> None:
    app = rs.App("v", brokers="unused:1")
    rates = app.table("rates", key="currency", time="ts")
    trades = app.stream("trades", key="currency", time="ts")
    trades.join(rates, versioned="1h").to("priced")
    d = TopologyTestDriver(app)
    d.pipe("rates", [{"currency": "EUR", "rate": 1.1, "ts": 1_000}], keys=["EUR"])
    d.pipe("rates", [{"currency": "EUR", "rate": 1.2, "ts": 5_000}], keys=["EUR"])
    d.pipe("trades", [{"currency": "EUR", "ts": 3_000}, {"currency": "EUR", "ts": 6_000}])
    assert [r.json()["rate"] for r in d.read("priced")] == [1.1, 1.2]


def test_table_table_join_emits_changes_and_tombstones() -> None:
    app = rs.App("tt", brokers="unused:1")
    left = app.table("profiles", key="id")
    right = app.table("limits", key="id")
    left.join(right, how="inner").to("joined")
    d = TopologyTestDriver(app)
    d.pipe("profiles", [{"id": "a", "name": "Ann"}], keys=["a"])
    assert d.read("joined") == []
    d.pipe("limits", [{"id": "a", "limit": 10}], keys=["a"])
    d.pipe("limits", [{"id": "a", "limit": 20}], keys=["a"])
    d.pipe("profiles", [None], keys=["a"])
    out = d.read("joined")
    assert [r.key for r in out] == [b"a", b"a", b"a"]
    assert [None if r.value is None else r.json()["limit"] for r in out] == [10, 20, None]
    assert out[0].json() == {"id": "a", "name": "Ann", "right_id": "a", "limit": 10}


def test_tombstone_keys_take_the_declared_key_type() -> None:
    app = rs.App("k", brokers="unused:1")
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    table = app.table("t", key="id", value=rs.JSON(schema))
    app.stream("s", key="id").join(table, how="left").to("out")
    d = TopologyTestDriver(app)
    d.pipe("t", [{"id": 7, "v": "x"}], keys=[7])
    d.pipe("s", [{"id": 7}])
    d.pipe("t", [None], keys=[7])  # Kafka key b"7" -> int64 7: deletes the key
    d.pipe("s", [{"id": 7}])
    assert [r.json()["v"] for r in d.read("out")] == ["x", None]


def test_joined_topics_must_be_co_partitioned() -> None:
    plan = enrich_app().plan()
    with pytest.raises(TopologyError) as err:
        plan.tasks({"payments": 8, "customers": 4})
    msg = str(err.value)
    assert "'payments' (8 partitions)" in msg and "'customers' (4 partitions)" in msg
    assert "repartition" in msg


def test_repartition_makes_a_stream_co_partitioned_with_a_table() -> None:
    app = rs.App("rp", brokers="unused:1")
    customers = app.table("customers", key="customer_id")
    stream = app.stream("payments", key="payment_id").repartition("customer_id", partitions=4)
    stream.join(customers, how="left").to("out")
    plan = app.plan()
    (topic,) = plan.internal_topics()
    assert plan.internal_topics() == {topic: 4}
    parts = plan.resolve_partitions({"payments": 8, "customers": 4})
    assert parts[topic] == 4
    assert len(plan.tasks(parts)) == 8 + 4
    d = TopologyTestDriver(app)
    d.pipe("customers", [{"customer_id": "c1", "segment": "s"}], keys=["c1"])
    d.pipe("payments", [{"payment_id": "p1", "customer_id": "c1"}])
    assert [(r.key, r.json()["segment"]) for r in d.read("out")] == [(b"c1", "s")]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda app, s, t, g: s.join(g), "needs on="),
        (lambda app, s, t, g: s.join(t, on="x"), "on= is for global tables"),
        (lambda app, s, t, g: s.join(t, window="1m"), "takes no window"),
        (lambda app, s, t, g: s.join(s, versioned="1h", window="1m"), "versioned= is for"),
        (lambda app, s, t, g: s.join(s), "needs a window"),
        (lambda app, s, t, g: s.join("customers"), "expects a Stream, a Table"),
        (lambda app, s, t, g: t.join(g), "expects a Table"),
        (lambda app, s, t, g: g.join(t), "global table cannot be joined"),
        (lambda app, s, t, g: s.join(t, how="outer"), "how must be one of"),
        (lambda app, s, t, g: s.join(rs.App("other").stream("x"), window="1m"), "two different"),
    ],
)
def test_bad_joins_fail_when_built_with_a_clear_error(build, message) -> None:  # type: ignore[no-untyped-def]
    app = rs.App("bad", brokers="unused:1")
    s = app.stream("payments")
    t = app.table("customers")
    g = app.global_table("merchants")
    with pytest.raises(rs.RaystreamError, match=message):
        build(app, s, t, g)


def test_a_global_table_joined_to_nothing_is_refused() -> None:
    app = rs.App("lonely", brokers="unused:1")
    app.global_table("merchants")
    app.stream("payments").to("out")
    with pytest.raises(TopologyError, match="not joined to any stream"):
        app.plan()


def test_a_materialized_global_table_holds_each_row_once_across_tasks() -> None:
    # Every task holds the whole global table; only the task of partition 0 keeps the view's
    # rows, or SQL over the view would see every merchant once per task.
    app = rs.App("gview", brokers="unused:1")
    merchants = app.global_table("merchants", key="merchant_id").materialize("merchants")
    app.stream("payments", key="customer_id").join(merchants, on="merchant_id").to("out")
    d = TopologyTestDriver(app, partitions=3)
    d.pipe(
        "merchants",
        [{"merchant_id": f"m{i}", "mcc": i} for i in range(4)],
        keys=["m0", "m1", "m2", "m3"],
    )
    views = [
        op
        for task in d._tasks.values()
        for op in task.operators.values()
        if getattr(op, "view", None) == "merchants"
    ]
    assert len(views) == 3
    assert sorted(op.to_arrow().num_rows for op in views) == [0, 0, 4]
    d.pipe("payments", [{"customer_id": "c1", "merchant_id": "m2"}], keys=["c1"], partition=2)
    assert [r.json()["mcc"] for r in d.read("out")] == [2]  # the join still sees the table
