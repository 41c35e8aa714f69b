"""jobs/order_processing.py on Ray with its simulated services: every order reaches the terminal
state its injected failures imply, every compensation happens exactly once, and the ``orders``
view equals the state rebuilt independently from the event log; also with saga workers killed
during the run (exactly-once: outputs are read through the read_committed model, eos_model.py)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import raystream as rs
from jobs import order_services
from jobs.order_processing import OrderTopics, build, ensure_topics
from jobs.views_ready import wait_for_views
from raystream.dev.broker import EmbeddedBroker
from raystream.generate.orders import OrdersSpec, expected_outcome
from raystream.generate.publish import publish_orders

from .eos_model import committed_epochs, committed_records
from .kafka_helpers import Msg, create_topic, read_all

PARTITIONS = 4
TERMINAL = {"OrderCompleted": "Completed", "OrderCancelled": "Cancelled"}


def new_apps(broker: EmbeddedBroker, unique: str, tmp_path: Path, spec: OrdersSpec):  # type: ignore[no-untyped-def]
    topics = OrderTopics(f"{unique}.")
    create_topic(broker.bootstrap, topics.inbox, PARTITIONS)
    settings: dict[str, Any] = dict(
        brokers=broker.bootstrap,
        checkpoints=(tmp_path / "ck").as_uri(),
        checkpoint_retain=1_000_000,  # keep every epoch: the model follows the whole lineage
        view_refresh_ms=200,
    )
    saga = rs.App(unique, **settings)
    build(saga, topics, shipping_timeout_ms=spec.shipping_timeout_ms)
    ensure_topics(saga.kafka_config(), topics)
    services = rs.App(f"{unique}-services", **settings)
    order_services.build(services, spec, topics)
    return saga, services, topics


def terminal_count(app: rs.App) -> int:
    if not any(v["name"] == "orders" and v["rows"] for v in app.views()):
        return 0
    q = "SELECT count(*) AS n FROM orders WHERE state IN ('Completed', 'Cancelled')"
    return int(app.sql(q).to_pylist()[0]["n"])


def wait_until_terminal(app: rs.App, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = terminal_count(app)
        if done == n:
            return
        time.sleep(0.5)
    raise AssertionError(f"only {done} of {n} orders reached a terminal state in {timeout}s")


def committed(app: rs.App, broker: EmbeddedBroker, topics: OrderTopics, topic: str) -> list[Msg]:
    parts = {topics.inbox: PARTITIONS, topics.events: PARTITIONS}
    heads = committed_epochs(app, broker.bootstrap, parts)
    return committed_records(app, heads, read_all(broker.bootstrap, topic))


def rebuild(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The orders' state from their event log, written apart from the job's projection."""
    log: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        log[e["order_id"]].append(e)
    out = {}
    for oid, evs in log.items():
        evs.sort(key=lambda e: e["version"])
        assert [e["version"] for e in evs] == list(range(1, len(evs) + 1)), (oid, evs)
        types = [e["type"] for e in evs]
        comps = [{"StockReleased": "release_stock", "PaymentRefunded": "refund_payment"}[t]
                 for t in types if t in ("StockReleased", "PaymentRefunded")]  # fmt: skip
        out[oid] = {
            "state": TERMINAL.get(types[-1], "open"),
            "reason": evs[-1]["reason"] if types[-1] in TERMINAL else None,
            "events": len(evs),
            "compensations": ",".join(comps),
        }
    return out


def check(
    saga: rs.App, broker: EmbeddedBroker, topics: OrderTopics, spec: OrdersSpec, view: list[dict]
) -> None:
    events = [m.json() for m in committed(saga, broker, topics, topics.events)]
    state = rebuild(events)
    assert len(state) == spec.count
    commands = {}
    for t in (topics.payment, topics.inventory, topics.shipping):
        cmds = [m.json() for m in committed(saga, broker, topics, t)]
        commands[t] = Counter((c["order_id"], c["command"]) for c in cmds)
    outcomes: Counter[str] = Counter()
    for oid, s in state.items():
        want = expected_outcome(oid, spec)
        outcomes[want.reason or "completed"] += 1
        assert (s["state"], s["reason"]) == (want.state, want.reason), (oid, s, want)
        assert s["compensations"] == ",".join(want.compensations), (oid, s, want)
        # Each compensation command went out exactly once (and only when needed).
        assert commands[topics.payment][(oid, "refund")] == want.compensations.count(
            "refund_payment"
        )
        assert commands[topics.inventory][(oid, "release")] == want.compensations.count(
            "release_stock"
        )
        assert commands[topics.payment][(oid, "charge")] == 1
    print(f"\noutcomes: {dict(outcomes)}")
    assert all(outcomes[r] > 0 for r in ("payment_declined", "out_of_stock", "shipping_timeout"))
    shown = {r["order_id"]: {k: r[k] for k in ("state", "reason", "events", "compensations")}
             for r in view}  # fmt: skip
    assert shown == state


def read_view(app: rs.App) -> list[dict]:
    wait_for_views(app)
    return app.sql("SELECT order_id, state, reason, events, compensations FROM orders").to_pylist()


def test_orders_reach_their_fated_states_and_the_view_equals_the_log(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    spec = OrdersSpec(count=1_000, seed=31, shipping_timeout_ms=3_000)
    saga, services, topics = new_apps(broker, unique, tmp_path, spec)
    running = saga.start(workers=2)
    helpers = services.start(workers=1)
    try:
        publish_orders(broker.bootstrap, spec, topic=topics.inbox, partitions=PARTITIONS)
        wait_until_terminal(saga, spec.count, timeout=180)
        # Late shipping confirmations (fate "timeout", 2-3x the timeout) arrive and are ignored.
        scheduled = sum(1 for m in read_all(broker.bootstrap, topics.shipping))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            confirmations = [m for m in read_all(broker.bootstrap, topics.inbox)
                             if m.json()["type"] == "ShipmentScheduled"]  # fmt: skip
            if len(confirmations) >= scheduled:
                break
            time.sleep(1)
        assert len(confirmations) == scheduled
        time.sleep(1)  # the saga reads them
        view = read_view(saga)
    finally:
        running.stop()
        helpers.stop()
    check(saga, broker, topics, spec, view)


def test_exactly_once_holds_with_saga_workers_killed_during_the_run(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    # Restarts take seconds: a long timeout keeps "delayed" confirmations (30-70% of it) in time.
    spec = OrdersSpec(count=1_500, seed=32, shipping_timeout_ms=20_000)
    saga, services, topics = new_apps(broker, unique, tmp_path, spec)
    running = saga.start(workers=2)
    helpers = services.start(workers=1)
    kills: list[int] = []
    try:
        producer = threading.Thread(
            target=publish_orders,
            args=(broker.bootstrap, spec),
            kwargs={"topic": topics.inbox, "partitions": PARTITIONS, "rate": 150.0},
        )
        producer.start()
        rng = random.Random(3)
        for _ in range(3):
            time.sleep(rng.uniform(2.0, 3.5))
            assert running.wait(timeout=0) == "running"
            assert producer.is_alive(), "orders were all in before the kill: make the run longer"
            pids = running.worker_pids()
            slot = rng.choice(sorted(pids))
            os.kill(pids[slot], signal.SIGKILL)
            kills.append(slot)
        producer.join()
        wait_until_terminal(saga, spec.count, timeout=240)
        view = read_view(saga)
    finally:
        running.stop()
        helpers.stop()
    assert len(kills) == 3
    raw = read_all(broker.bootstrap, topics.events)
    kept = committed(saga, broker, topics, topics.events)
    print(f"\n{len(raw)} events in the log, {len(raw) - len(kept)} of aborted epochs dropped")
    check(saga, broker, topics, spec, view)
