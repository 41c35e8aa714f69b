"""Seeded order lifecycles for the event-sourced order-processing saga, with known outcomes.

:func:`order_events` gives the ``OrderCreated`` events of the input topic. :func:`fate` says,
for one order, what the simulated payment, inventory and shipping services answer; it is a pure
function of ``(spec.seed, order_id)`` and the spec's rates, so any process (a simulated service, a
test) computes the same fate without coordination. :func:`expected_outcome` gives the terminal state
and compensations the saga must reach.

The saga assumed (:data:`SAGA_STEPS`), one step after the other:

1. ``payment``: charge ``total``. Declined -> ``Cancelled("payment_declined")``, nothing to undo.
2. ``inventory``: reserve the items. Out of stock -> ``Cancelled("out_of_stock")``; compensate
   with ``refund_payment``.
3. ``shipping``: schedule the shipment and wait at most ``shipping_timeout_ms`` for the
   confirmation. No confirmation in time -> ``Cancelled("shipping_timeout")``; compensate with
   ``release_stock`` then ``refund_payment`` (the reverse of the steps done).
4. Otherwise ``Completed``, no compensation.

The three fates are drawn independently, so e.g. an order may be both declined and out of stock;
only the first failing step counts, because later services are never asked. Shipping replies:
``ok`` after ``shipping_delay_ms`` in ``[0, 10%]`` of the timeout, ``delayed`` in ``[30%, 70%]``
(late but in time: still Completed), ``timeout`` in ``[200%, 300%]`` (the saga has cancelled by
then and must ignore the late confirmation; a simulated service may also never answer). The wide
margins keep outcomes stable under scheduling jitter, whichever clock the saga's timer uses.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from raystream.errors import ConfigError

#: The saga's steps, in the order it runs them.
SAGA_STEPS: tuple[str, ...] = ("payment", "inventory", "shipping")
COMPLETED = "Completed"
CANCELLED = "Cancelled"
PAYMENT_DECLINED = "payment_declined"
OUT_OF_STOCK = "out_of_stock"
SHIPPING_TIMEOUT = "shipping_timeout"
REFUND_PAYMENT = "refund_payment"
RELEASE_STOCK = "release_stock"


@dataclass(frozen=True)
class OrdersSpec:
    """What orders to generate and how often each service fails.

    Order ``i`` (``"o%09d"``) is created at ``start_ms + i * step_ms``. Rates are probabilities per
    order: ``shipping_delay_rate`` (slow but in time) and ``shipping_timeout_rate`` (too late)
    together must not exceed 1.
    """

    count: int = 1_000
    customers: int = 500
    skus: int = 200
    seed: int = 7
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    step_ms: int = 1_000
    max_items: int = 4
    payment_decline_rate: float = 0.10
    out_of_stock_rate: float = 0.05
    shipping_delay_rate: float = 0.10
    shipping_timeout_rate: float = 0.05
    shipping_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.count < 0 or self.customers < 1 or self.skus < 1:
            raise ConfigError("OrdersSpec: count must be >= 0, customers and skus >= 1")
        if self.step_ms < 0 or self.shipping_timeout_ms <= 0:
            raise ConfigError("OrdersSpec: step_ms must be >= 0 and shipping_timeout_ms > 0")
        if not 1 <= self.max_items <= self.skus:
            raise ConfigError(f"OrdersSpec.max_items must be in [1, skus={self.skus}]")
        for name in (
            "payment_decline_rate",
            "out_of_stock_rate",
            "shipping_delay_rate",
            "shipping_timeout_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"OrdersSpec.{name} must be a probability in [0, 1]")
        if self.shipping_delay_rate + self.shipping_timeout_rate > 1.0:
            raise ConfigError(
                "OrdersSpec: shipping_delay_rate + shipping_timeout_rate must not exceed 1"
            )


@dataclass(frozen=True)
class Fate:
    """What the services answer for one order.

    ``payment`` is ``"ok"``/``"declined"``, ``stock`` ``"ok"``/``"out"``, ``shipping``
    ``"ok"``/``"delayed"``/``"timeout"``; ``shipping_delay_ms`` is how long the shipping service
    waits before it confirms.
    """

    order_id: str
    payment: str
    stock: str
    shipping: str
    shipping_delay_ms: int


@dataclass(frozen=True)
class Outcome:
    """The saga's terminal state for one order.

    ``reason`` is ``None`` when Completed; ``compensations`` are in the order the saga runs them.
    """

    order_id: str
    state: str
    reason: str | None
    compensations: tuple[str, ...]


def catalog(spec: OrdersSpec) -> list[dict[str, Any]]:
    """One row per SKU: ``sku`` and unit ``price``."""
    rng = random.Random(spec.seed * 7919 + 23)
    return [
        {"sku": f"sku{i:05d}", "price": max(0.5, round(rng.lognormvariate(3.0, 0.8), 2))}
        for i in range(spec.skus)
    ]


def order_events(spec: OrdersSpec) -> Iterator[dict[str, Any]]:
    """``spec.count`` ``OrderCreated`` events in event-time order."""
    rng = random.Random(spec.seed)
    prices = [row["price"] for row in catalog(spec)]
    for i in range(spec.count):
        lines = rng.sample(range(spec.skus), rng.randint(1, spec.max_items))
        items = [
            {"sku": f"sku{s:05d}", "qty": rng.choice((1, 1, 1, 2, 2, 3)), "price": prices[s]}
            for s in lines
        ]
        yield {
            "type": "OrderCreated",
            "order_id": order_id(i),
            "customer_id": f"c{rng.randrange(spec.customers):06d}",
            "items": items,
            "total": round(sum(it["qty"] * it["price"] for it in items), 2),
            "ts": spec.start_ms + i * spec.step_ms,
        }


def order_id(i: int) -> str:
    """The id of the ``i``-th order."""
    return f"o{i:09d}"


def fate(order: str | Mapping[str, Any], spec: OrdersSpec) -> Fate:
    """The services' answers for ``order`` (an id or an ``OrderCreated`` event); pure."""
    oid = order if isinstance(order, str) else str(order["order_id"])
    digest = hashlib.blake2b(f"{spec.seed}:{oid}".encode(), digest_size=32).digest()
    u_pay, u_stock, u_ship, u_delay = (
        int.from_bytes(digest[i : i + 8], "big") / 2.0**64 for i in range(0, 32, 8)
    )
    if u_ship < spec.shipping_timeout_rate:
        shipping, low, high = "timeout", 2.0, 3.0
    elif u_ship < spec.shipping_timeout_rate + spec.shipping_delay_rate:
        shipping, low, high = "delayed", 0.3, 0.7
    else:
        shipping, low, high = "ok", 0.0, 0.1
    return Fate(
        order_id=oid,
        payment="declined" if u_pay < spec.payment_decline_rate else "ok",
        stock="out" if u_stock < spec.out_of_stock_rate else "ok",
        shipping=shipping,
        shipping_delay_ms=int(spec.shipping_timeout_ms * (low + (high - low) * u_delay)),
    )


def expected_outcome(order: str | Mapping[str, Any], spec: OrdersSpec) -> Outcome:
    """The terminal state and compensations of ``order`` under the saga in the module docstring."""
    f = fate(order, spec)
    if f.payment != "ok":
        return Outcome(f.order_id, CANCELLED, PAYMENT_DECLINED, ())
    if f.stock != "ok":
        return Outcome(f.order_id, CANCELLED, OUT_OF_STOCK, (REFUND_PAYMENT,))
    if f.shipping == "timeout":
        return Outcome(f.order_id, CANCELLED, SHIPPING_TIMEOUT, (RELEASE_STOCK, REFUND_PAYMENT))
    return Outcome(f.order_id, COMPLETED, None, ())
