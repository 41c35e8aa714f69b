"""The order saga (an orchestrator) and the event-sourced read model of orders, as keyed process
functions. Pure logic: :mod:`jobs.order_processing` wires them to topics.

The saga, per order (key ``order_id``), one step after the other (see
:mod:`raystream.generate.orders`):

    OrderCreated      -> charge (payment)                      step payment
    PaymentProcessed  -> reserve (inventory)                   step inventory
    PaymentFailed     -> OrderCancelled(payment_declined)      done
    InventoryReserved -> schedule (shipping), start the timer  step shipping
    OutOfStock        -> refund (payment)                      step refund
    ShipmentScheduled -> OrderCompleted                        done
    timer fires       -> ShipmentTimedOut, release (inventory) step release
    StockReleased     -> refund (payment)                      step refund
    PaymentRefunded   -> OrderCancelled(reason)                done

Every event the saga accepts or decides is appended to the order's event log (output
``events``) with the next ``version`` (1, 2, ...). A reply that does not answer the current
step (a duplicate, or a shipping confirmation after the timeout) changes nothing. The timeout is
a processing-time timer, stored with the state, so it survives restarts. A finished order's
state is forgotten ``forget_after_ms`` later (its late replies are then unknown and ignored).

The read model (:class:`OrderProjection`) folds each order's events, applying version ``n`` only
after ``n - 1`` (so a duplicated event is applied once), into one row per order: its state,
reason, history length (``events``) and compensations (comma-separated, in order).
"""

from __future__ import annotations

from typing import Any

import raystream as rs

#: Outputs of the saga, in this order.
OUTPUTS = ("events", "payment", "inventory", "shipping")

COMPLETED = "Completed"
CANCELLED = "Cancelled"
TERMINAL_EVENTS = {"OrderCompleted": COMPLETED, "OrderCancelled": CANCELLED}
#: The read model's state after each event type.
STATE_AFTER = {
    "OrderCreated": "Created",
    "PaymentProcessed": "Paid",
    "PaymentFailed": "PaymentFailed",
    "InventoryReserved": "Reserved",
    "OutOfStock": "OutOfStock",
    "ShipmentScheduled": "Shipped",
    "ShipmentTimedOut": "ShippingTimedOut",
    "StockReleased": "StockReleased",
    "PaymentRefunded": "Refunded",
    "OrderCompleted": COMPLETED,
    "OrderCancelled": CANCELLED,
}
#: Events that record a compensation done.
COMPENSATION_EVENTS = {"StockReleased": "release_stock", "PaymentRefunded": "refund_payment"}


class OrderSaga(rs.ProcessFunction):
    """Orchestrates payment, inventory and shipping for each order; compensates on failure."""

    def __init__(self, shipping_timeout_ms: int = 30_000, forget_after_ms: int = 600_000) -> None:
        self.shipping_timeout_ms = shipping_timeout_ms
        self.forget_after_ms = forget_after_ms

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        kind = value.get("type")
        s = ctx.state
        if kind == "OrderCreated":
            if s.get("step") is not None:
                return  # a duplicate order: the saga runs once
            s["step"] = "payment"
            s["version"] = 0
            s["order"] = {
                "customer_id": value.get("customer_id"),
                "total": float(value.get("total") or 0.0),
                "items": value.get("items") or [],
                "created_ts": int(value.get("ts") or ctx.timestamp),
            }
            self._event(ctx, "OrderCreated")
            self._command(ctx, "payment", "charge")
            return
        step = s.get("step")
        if step is None:
            return  # a reply for an order this saga does not know (or forgot): ignore
        if step == "payment" and kind == "PaymentProcessed":
            self._event(ctx, kind)
            s["step"] = "inventory"
            self._command(ctx, "inventory", "reserve")
        elif step == "payment" and kind == "PaymentFailed":
            self._event(ctx, kind)
            self._finish(ctx, "OrderCancelled", "payment_declined")
        elif step == "inventory" and kind == "InventoryReserved":
            self._event(ctx, kind)
            s["step"] = "shipping"
            deadline = ctx.processing_time + self.shipping_timeout_ms
            s["deadline"] = deadline
            ctx.timers.register_processing_time(deadline)
            self._command(ctx, "shipping", "schedule")
        elif step == "inventory" and kind == "OutOfStock":
            self._event(ctx, kind)
            s["reason"] = "out_of_stock"
            s["step"] = "refund"
            self._command(ctx, "payment", "refund")
        elif step == "shipping" and kind == "ShipmentScheduled":
            ctx.timers.delete_processing_time(s.pop("deadline"))
            self._event(ctx, kind)
            self._finish(ctx, "OrderCompleted", None)
        elif step == "release" and kind == "StockReleased":
            self._event(ctx, kind)
            s["step"] = "refund"
            self._command(ctx, "payment", "refund")
        elif step == "refund" and kind == "PaymentRefunded":
            self._event(ctx, kind)
            self._finish(ctx, "OrderCancelled", s.get("reason"))
        # Anything else answers no open step (a duplicate, a late confirmation): ignored.

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        s = ctx.state
        if s.get("step") == "done":
            if timestamp == s.get("forget_at"):
                s.clear()
            return
        if s.get("step") == "shipping" and timestamp == s.get("deadline"):
            del s["deadline"]
            self._event(ctx, "ShipmentTimedOut")
            s["reason"] = "shipping_timeout"
            s["step"] = "release"
            self._command(ctx, "inventory", "release")

    # -- helpers ------------------------------------------------------------------------------
    def _event(self, ctx: rs.ProcessContext, kind: str, reason: str | None = None) -> None:
        s = ctx.state
        s["version"] += 1
        order = s["order"]
        ctx.emit(
            {
                "order_id": ctx.key,
                "version": s["version"],
                "type": kind,
                "reason": reason,
                "customer_id": order["customer_id"],
                "total": order["total"],
                "created_ts": order["created_ts"],
                "ts": ctx.processing_time,
            },
            to="events",
            timestamp=ctx.processing_time,
        )

    def _command(self, ctx: rs.ProcessContext, service: str, command: str) -> None:
        order = ctx.state["order"]
        body: dict[str, Any] = {
            "order_id": ctx.key,
            "command": command,
            "ts": ctx.processing_time,
        }
        if service == "payment":
            body["amount"] = order["total"]
        elif service == "inventory":
            body["items"] = [{"sku": it["sku"], "qty": it["qty"]} for it in order["items"]]
        else:
            body["customer_id"] = order["customer_id"]
        ctx.emit(body, to=service, timestamp=ctx.processing_time)

    def _finish(self, ctx: rs.ProcessContext, kind: str, reason: str | None) -> None:
        self._event(ctx, kind, reason)
        s = ctx.state
        s["step"] = "done"
        s["forget_at"] = ctx.processing_time + self.forget_after_ms
        ctx.timers.register_processing_time(s["forget_at"])


class OrderProjection(rs.ProcessFunction):
    """The CQRS read model: folds an order's events (version by version) into its current row."""

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        s = ctx.state
        version = int(value["version"])
        if version != s.get("events", 0) + 1:
            return  # already applied (a duplicate), or a gap: wait for the missing event
        row = apply_event(dict(s), value)
        s.update(row)
        ctx.emit(row)


def apply_event(row: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The read-model row after ``event`` (``row`` is the row before it, ``{}`` at first)."""
    kind = event["type"]
    compensations = [c for c in (row.get("compensations") or "").split(",") if c]
    if kind in COMPENSATION_EVENTS:
        compensations.append(COMPENSATION_EVENTS[kind])
    return {
        "order_id": event["order_id"],
        "state": STATE_AFTER.get(kind, row.get("state")),
        "reason": event.get("reason") if kind in TERMINAL_EVENTS else row.get("reason"),
        "events": int(event["version"]),
        "last_event": kind,
        "compensations": ",".join(compensations),  # in the order they were done
        "customer_id": event.get("customer_id"),
        "total": event.get("total"),
        "created_ts": event.get("created_ts"),
        "updated_ts": event.get("ts"),
    }
