"""Order processing: event-sourced orders, a saga orchestrator with compensations, and the
``orders`` read model (CQRS), with the simulated services that make the whole flow run.

    raystream generate orders --count 10000 --truth orders-truth.jsonl
    python jobs/order_processing.py --workers 2 --timeout 120
    ray job submit --working-dir . -- python jobs/order_processing.py --timeout 120

Topics (all keyed by ``order_id``, so one order's records stay in one partition):

* ``orders``: the saga's inbox: ``OrderCreated`` (from the shop, or ``raystream generate``) and
  the services' replies.
* ``payment.commands``, ``inventory.commands``, ``shipping.commands``: what the saga asks.
* ``order.events``: every order's event log, versioned 1, 2, ... (OrderCreated,
  PaymentProcessed / PaymentFailed, InventoryReserved / OutOfStock, ShipmentScheduled /
  ShipmentTimedOut, StockReleased, PaymentRefunded, OrderCompleted / OrderCancelled).

Two apps run: ``order-processing`` (the saga in :mod:`jobs.order_saga`, and the projection that
rebuilds the ``orders`` view from ``order.events``) and ``order-services``
(:mod:`jobs.order_services`; ``--no-services`` to run them elsewhere). Query the view with
``raystream sql "SELECT state, count(*) FROM orders GROUP BY state"``.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import raystream as rs
from jobs import order_services
from jobs.order_saga import OUTPUTS, OrderProjection, OrderSaga


class OrderTopics(order_services.ServiceTopics):
    """Every topic of the flow."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(prefix)
        self.events = f"{prefix}order.events"


def build(
    app: rs.App,
    topics: OrderTopics | None = None,
    *,
    shipping_timeout_ms: int = 30_000,
    forget_after_ms: int = 600_000,
) -> None:
    """The saga and the ``orders`` read model on ``app``."""
    t = topics or OrderTopics()
    saga = OrderSaga(shipping_timeout_ms, forget_after_ms)
    events, payment, inventory, shipping = app.stream(t.inbox, key="order_id", time="ts").process(
        saga, outputs=OUTPUTS, name="saga"
    )
    events.to(t.events)
    payment.to(t.payment)
    inventory.to(t.inventory)
    shipping.to(t.shipping)
    (
        app.stream(t.events, key="order_id", time="ts")
        .process(OrderProjection(), name="projection")
        .materialize("orders")
    )


def ensure_topics(kafka: rs.KafkaConfig, topics: OrderTopics | None = None) -> None:
    """Create the event log and command topics (as many partitions as the inbox) before the
    apps start: each app reads a topic the other, or its own other flow, writes."""
    from raystream._kafka.admin import Topics

    t = topics or OrderTopics()
    admin = Topics(kafka)
    (n,) = admin.require([t.inbox]).values()
    admin.ensure({name: n for name in (t.events, t.payment, t.inventory, t.shipping)})


STATE_SQL = (
    "SELECT state, coalesce(reason, '') AS reason, count(*) AS orders, "
    "round(avg(events), 2) AS mean_events FROM orders GROUP BY ALL ORDER BY orders DESC"
)


def main(argv: list[str] | None = None) -> rs.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", default="order-processing")
    parser.add_argument("--prefix", default="", help="prefix of every topic name")
    parser.add_argument("--brokers", default=None, help="default: RAYSTREAM_BROKERS or dev stack")
    parser.add_argument("--workers", type=int, default=2, help="saga workers")
    parser.add_argument("--service-workers", type=int, default=1)
    parser.add_argument("--no-services", action="store_true", help="run the services elsewhere")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many s")
    parser.add_argument(
        "--commit-interval-ms",
        type=int,
        default=order_services.LOW_LATENCY["commit_interval_ms"],
        help="epoch length: shorter is lower latency, longer is less work per order",
    )
    order_services.spec_arguments(parser)
    args = parser.parse_args(argv)
    topics = OrderTopics(args.prefix)
    tuning = {**order_services.LOW_LATENCY, "commit_interval_ms": args.commit_interval_ms}
    app = rs.App(args.app, brokers=args.brokers, **tuning)
    build(app, topics, shipping_timeout_ms=args.shipping_timeout_ms)
    ensure_topics(app.kafka_config(), topics)
    services: Any = None
    if not args.no_services:
        services_app = rs.App(f"{args.app}-services", brokers=args.brokers, **tuning)
        order_services.build(services_app, order_services.spec_from(args), topics)
        services = services_app.start(workers=args.service_workers)
    running = app.start(workers=args.workers)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            running.wait(args.timeout)
            print_orders(app)
    finally:
        result = running.stop()
        if services is not None:
            services.stop()
    print(
        f"{args.app}: {result.state}; in={result.records_in} out={result.records_out} "
        f"dead_letters={result.dead_letters} in {result.seconds:.1f}s"
    )
    return result


def print_orders(app: rs.App) -> None:
    """Print the orders per state and reason, by SQL over the ``orders`` view."""
    if not any(v["name"] == "orders" and v["rows"] for v in app.views()):
        print("-- orders: none yet")
        return
    table = app.sql(STATE_SQL)
    print("-- orders by state")
    for row in table.to_pylist():
        print(
            f"  {row['state']:<12} {row['reason']:<18} {row['orders']:>8,}  "
            f"{row['mean_events']} events"
        )


if __name__ == "__main__":
    raise SystemExit(0 if main().state in ("finished", "stopped", "running") else 1)
