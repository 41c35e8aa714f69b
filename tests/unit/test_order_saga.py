"""The order saga and its read model without Kafka or Ray: the services are played by the test
(replies computed from each order's fate, shipping confirmations delayed on the driver's clock),
so every order must reach the outcome its fate implies, with each compensation once."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import raystream as rs
from jobs.order_processing import OrderTopics, build
from jobs.order_saga import apply_event
from jobs.order_services import inventory_reply, payment_reply
from raystream.generate.orders import OrdersSpec, expected_outcome, fate, order_events
from raystream.testing import TopologyTestDriver

T = OrderTopics()
SPEC = OrdersSpec(count=400, seed=5, shipping_timeout_ms=1_000)


def run(duplicate_replies: bool) -> tuple[list[dict[str, Any]], dict[str, list[dict]], Any]:
    app = rs.App("orders-unit", brokers="unused:9092")
    build(app, T, shipping_timeout_ms=SPEC.shipping_timeout_ms, forget_after_ms=60_000)
    driver = TopologyTestDriver(app, partitions=1, clock_ms=1_000_000)
    orders = list(order_events(SPEC))
    driver.pipe(T.inbox, orders, keys=[o["order_id"] for o in orders])
    pending: list[tuple[int, dict[str, Any]]] = []  # (due, shipping confirmation)
    events: list[dict[str, Any]] = []
    commands: dict[str, list[dict]] = defaultdict(list)
    for _ in range(2_000):
        replies = []
        for topic, answer in ((T.payment, payment_reply), (T.inventory, inventory_reply)):
            for cmd in driver.read_values(topic):
                commands[topic].append(cmd)
                replies += [answer(SPEC, cmd)] * (2 if duplicate_replies else 1)
        for cmd in driver.read_values(T.shipping):
            commands[T.shipping].append(cmd)
            delay = fate(cmd["order_id"], SPEC).shipping_delay_ms
            pending.append((driver._clock + delay, {"type": "ShipmentScheduled", **cmd}))
        due = [r for t, r in pending if t <= driver._clock]
        pending = [(t, r) for t, r in pending if t > driver._clock]
        replies += due
        if replies:
            driver.pipe(T.inbox, replies, keys=[r["order_id"] for r in replies])
        new = driver.read_values(T.events)
        events += new
        if new:  # the projection reads the event log (twice when duplicating, as a replay would)
            for _ in range(2 if duplicate_replies else 1):
                driver.pipe(T.events, new, keys=[e["order_id"] for e in new])
        if not replies and not new and not pending:
            break
        driver.advance_time(50)
    projection = next(
        op for task in driver._tasks.values() for op in task.operators.values()
        if getattr(op, "name", "") == "projection"
    )  # fmt: skip
    return events, commands, projection


def check(duplicate_replies: bool) -> None:
    events, commands, projection = run(duplicate_replies)
    by_order: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_order[e["order_id"]].append(e)
    assert len(by_order) == SPEC.count
    refunds = Counter(c["order_id"] for c in commands[T.payment] if c["command"] == "refund")
    releases = Counter(c["order_id"] for c in commands[T.inventory] if c["command"] == "release")
    for oid, evs in by_order.items():
        want = expected_outcome(oid, SPEC)
        assert [e["version"] for e in evs] == list(range(1, len(evs) + 1))
        last = evs[-1]
        state = {"OrderCompleted": "Completed", "OrderCancelled": "Cancelled"}[last["type"]]
        assert (state, last["reason"]) == (want.state, want.reason), (oid, evs)
        assert refunds[oid] == want.compensations.count("refund_payment")
        assert releases[oid] == want.compensations.count("release_stock")
        row: dict[str, Any] = {}
        for e in evs:
            row = apply_event(row, e)
        assert projection.key_state(oid) == row
        assert row["compensations"] == ",".join(want.compensations)
    outcomes = Counter(expected_outcome(o, SPEC).reason for o in by_order)
    assert all(outcomes[r] > 0 for r in ("payment_declined", "out_of_stock", "shipping_timeout"))


def test_every_order_reaches_its_fated_outcome_with_compensations_once() -> None:
    check(duplicate_replies=False)


def test_duplicate_replies_and_events_change_nothing() -> None:
    check(duplicate_replies=True)
