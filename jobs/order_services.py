"""Simulated payment, inventory and shipping services for the order saga: a raystream app.

    python jobs/order_services.py --shipping-timeout-ms 30000     # beside jobs/order_processing.py

Each service consumes its command topic and replies into the saga's inbox (``orders``), keyed by
order id. What it answers is the order's fate (:func:`raystream.generate.orders.fate`), a pure
function of the seed, the rates and the order id, so a test knows every outcome in advance:

* payment: ``charge`` -> PaymentProcessed | PaymentFailed; ``refund`` -> PaymentRefunded.
* inventory: ``reserve`` -> InventoryReserved | OutOfStock; ``release`` -> StockReleased.
* shipping: ``schedule`` -> ShipmentScheduled after the fate's delay (a processing-time timer
  in a keyed process function), so "timeout" fates answer long after the saga gave up.

Why a raystream app rather than a plain consumer loop: the shipping delay is a timer that must
survive restarts (it is checkpointed with the state), replies are written exactly once with the
input offsets, and the services run, scale and are submitted exactly like the saga.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import raystream as rs
from raystream.generate.orders import OrdersSpec, fate


class ServiceTopics:
    """The command topics the services read and the inbox they answer to."""

    def __init__(self, prefix: str = "") -> None:
        self.inbox = f"{prefix}orders"
        self.payment = f"{prefix}payment.commands"
        self.inventory = f"{prefix}inventory.commands"
        self.shipping = f"{prefix}shipping.commands"


def _now() -> int:
    return int(time.time() * 1000)


def payment_reply(spec: OrdersSpec, cmd: dict[str, Any]) -> dict[str, Any]:
    """The payment service's answer to ``charge`` or ``refund``."""
    oid = cmd["order_id"]
    if cmd["command"] == "refund":
        kind = "PaymentRefunded"
    else:
        kind = "PaymentProcessed" if fate(oid, spec).payment == "ok" else "PaymentFailed"
    return {"type": kind, "order_id": oid, "amount": cmd.get("amount"), "ts": _now()}


def inventory_reply(spec: OrdersSpec, cmd: dict[str, Any]) -> dict[str, Any]:
    """The inventory service's answer to ``reserve`` or ``release``."""
    oid = cmd["order_id"]
    if cmd["command"] == "release":
        kind = "StockReleased"
    else:
        kind = "InventoryReserved" if fate(oid, spec).stock == "ok" else "OutOfStock"
    return {"type": kind, "order_id": oid, "ts": _now()}


class ShippingService(rs.ProcessFunction):
    """Confirms a shipment once the order's fated delay has passed (processing time)."""

    def __init__(self, spec: OrdersSpec) -> None:
        self.spec = spec

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        if value.get("command") != "schedule" or "due" in ctx.state:
            return  # a duplicate command: one confirmation per order
        due = ctx.processing_time + fate(str(key), self.spec).shipping_delay_ms
        ctx.state["due"] = due
        ctx.timers.register_processing_time(due)

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        ctx.emit(
            {"type": "ShipmentScheduled", "order_id": str(key), "ts": timestamp},
            timestamp=timestamp,
        )
        ctx.state["due"] = -1  # answered; remembered so a duplicate command is not answered


def build(app: rs.App, spec: OrdersSpec, topics: ServiceTopics | None = None) -> None:
    """The three services on ``app``."""
    t = topics or ServiceTopics()
    (
        app.stream(t.payment, key="order_id", time="ts")
        .map(lambda c: payment_reply(spec, c), name="payment_service")
        .to(t.inbox)
    )
    (
        app.stream(t.inventory, key="order_id", time="ts")
        .map(lambda c: inventory_reply(spec, c), name="inventory_service")
        .to(t.inbox)
    )
    (
        app.stream(t.shipping, key="order_id", time="ts")
        .process(ShippingService(spec), name="shipping_service")
        .to(t.inbox)
    )


def spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The fate options (they must match what the generator and the saga use)."""
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decline-rate", type=float, default=0.10)
    parser.add_argument("--out-of-stock-rate", type=float, default=0.05)
    parser.add_argument("--shipping-delay-rate", type=float, default=0.10)
    parser.add_argument("--shipping-timeout-rate", type=float, default=0.05)
    parser.add_argument("--shipping-timeout-ms", type=int, default=30_000)


def spec_from(args: argparse.Namespace) -> OrdersSpec:
    """The :class:`OrdersSpec` whose fates the services answer with."""
    return OrdersSpec(
        seed=args.seed,
        payment_decline_rate=args.decline_rate,
        out_of_stock_rate=args.out_of_stock_rate,
        shipping_delay_rate=args.shipping_delay_rate,
        shipping_timeout_rate=args.shipping_timeout_rate,
        shipping_timeout_ms=args.shipping_timeout_ms,
    )


#: Order handling is latency-bound (each saga step waits for the writer's epoch to commit):
#: short epochs and short fetch waits, as bench/orders_latency.py measures them. The embedded
#: broker answers a fetch only when its wait is over, and each fetch costs it CPU: 25 ms took
#: 6% of a core less than 10 ms there (68-69% against 74-75%) with no latency lost. Epochs of
#: 100 ms, not 50: every transaction leaves the broker more to list on each fetch, and over a
#: minute at 10,000 orders/min 50 ms epochs made it slower and the latency higher (p50 739-854
#: against 632-744 ms, alternating runs; bench/README.md, 2026-12-07).
LOW_LATENCY: dict[str, Any] = {
    "commit_interval_ms": 100,
    "poll_timeout_ms": 10,
    "consumer_config": {"fetch.wait.max.ms": 25},
    # Overlapped commits buy throughput; at this job's light load they made each hop's commit
    # come more often and wait longer on the shared broker (orders p50 +10%, bench/README.md).
    "overlap_commits": False,
}


def main(argv: list[str] | None = None) -> rs.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", default="order-services")
    parser.add_argument("--prefix", default="", help="prefix of every topic name")
    parser.add_argument("--brokers", default=None, help="default: RAYSTREAM_BROKERS or dev stack")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many s")
    spec_arguments(parser)
    args = parser.parse_args(argv)
    app = rs.App(args.app, brokers=args.brokers, **LOW_LATENCY)
    build(app, spec_from(args), ServiceTopics(args.prefix))
    result = app.run(workers=args.workers, timeout=args.timeout)
    print(f"{args.app}: {result.state}; in={result.records_in} out={result.records_out}")
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main().state in ("finished", "stopped") else 1)
