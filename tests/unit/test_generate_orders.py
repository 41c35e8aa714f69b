"""The order generator: deterministic events, pure fates, and outcomes that follow the saga."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

import raystream.generate as gen
from raystream.errors import ConfigError
from raystream.generate.orders import (
    CANCELLED,
    COMPLETED,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    REFUND_PAYMENT,
    RELEASE_STOCK,
    SAGA_STEPS,
    SHIPPING_TIMEOUT,
    OrdersSpec,
    catalog,
    expected_outcome,
    fate,
    order_events,
    order_id,
)

BIG = OrdersSpec(count=20_000, seed=3)


@pytest.fixture(scope="module")
def big_orders() -> list[dict[str, Any]]:
    return list(order_events(BIG))


def test_same_seed_same_orders() -> None:
    spec = OrdersSpec(count=500, seed=11)
    assert list(order_events(spec)) == list(order_events(spec))
    assert list(order_events(replace(spec, seed=12))) != list(order_events(spec))


def test_order_created_events(big_orders: list[dict[str, Any]]) -> None:
    prices = {row["sku"]: row["price"] for row in catalog(BIG)}
    assert len(big_orders) == BIG.count
    assert len({o["order_id"] for o in big_orders}) == BIG.count
    ts = [o["ts"] for o in big_orders]
    assert ts == sorted(ts) and ts[0] == BIG.start_ms
    assert ts[1] - ts[0] == BIG.step_ms
    for o in big_orders[:2_000]:
        assert o["type"] == "OrderCreated"
        assert 1 <= len(o["items"]) <= BIG.max_items
        assert len({it["sku"] for it in o["items"]}) == len(o["items"])
        for it in o["items"]:
            assert it["price"] == prices[it["sku"]] and it["qty"] >= 1
        assert o["total"] == round(sum(it["qty"] * it["price"] for it in o["items"]), 2)
        assert o["customer_id"].startswith("c")


def test_fate_is_a_pure_function_of_seed_and_order_id(big_orders: list[dict[str, Any]]) -> None:
    o = big_orders[123]
    assert fate(o, BIG) == fate(o["order_id"], BIG) == fate(order_id(123), replace(BIG, count=1))
    assert fate(o, BIG).order_id == o["order_id"]
    # Another seed gives other fates for the same ids.
    other = replace(BIG, seed=4)
    ids = [order_id(i) for i in range(200)]
    assert [fate(i, BIG) for i in ids] != [fate(i, other) for i in ids]


def test_rates_are_roughly_honoured(big_orders: list[dict[str, Any]]) -> None:
    fates = [fate(o, BIG) for o in big_orders]
    n = len(fates)
    payment = Counter(f.payment for f in fates)
    stock = Counter(f.stock for f in fates)
    shipping = Counter(f.shipping for f in fates)
    assert payment["declined"] / n == pytest.approx(BIG.payment_decline_rate, abs=0.01)
    assert stock["out"] / n == pytest.approx(BIG.out_of_stock_rate, abs=0.01)
    assert shipping["delayed"] / n == pytest.approx(BIG.shipping_delay_rate, abs=0.01)
    assert shipping["timeout"] / n == pytest.approx(BIG.shipping_timeout_rate, abs=0.01)


def test_shipping_delays_sit_well_clear_of_the_timeout(big_orders: list[dict[str, Any]]) -> None:
    timeout = BIG.shipping_timeout_ms
    for o in big_orders[:5_000]:
        f = fate(o, BIG)
        if f.shipping == "timeout":
            assert f.shipping_delay_ms >= 2 * timeout
        elif f.shipping == "delayed":
            assert 0.3 * timeout <= f.shipping_delay_ms <= 0.7 * timeout
        else:
            assert 0 <= f.shipping_delay_ms <= 0.1 * timeout


def test_outcomes_follow_the_saga(big_orders: list[dict[str, Any]]) -> None:
    assert SAGA_STEPS == ("payment", "inventory", "shipping")
    seen: Counter[str | None] = Counter()
    for o in big_orders:
        f, out = fate(o, BIG), expected_outcome(o, BIG)
        want: tuple[str, str | None, tuple[str, ...]]
        assert out.order_id == o["order_id"]
        if f.payment == "declined":
            want = (CANCELLED, PAYMENT_DECLINED, ())
        elif f.stock == "out":
            want = (CANCELLED, OUT_OF_STOCK, (REFUND_PAYMENT,))
        elif f.shipping == "timeout":
            want = (CANCELLED, SHIPPING_TIMEOUT, (RELEASE_STOCK, REFUND_PAYMENT))
        else:
            want = (COMPLETED, None, ())
        assert (out.state, out.reason, out.compensations) == want
        seen[out.reason] += 1
    n = len(big_orders)
    p, s, t = BIG.payment_decline_rate, BIG.out_of_stock_rate, BIG.shipping_timeout_rate
    assert seen[PAYMENT_DECLINED] / n == pytest.approx(p, abs=0.01)
    assert seen[OUT_OF_STOCK] / n == pytest.approx((1 - p) * s, abs=0.01)
    assert seen[SHIPPING_TIMEOUT] / n == pytest.approx((1 - p) * (1 - s) * t, abs=0.01)


def test_zero_rates_complete_everything_and_full_rates_cancel_everything() -> None:
    calm = OrdersSpec(
        count=300,
        payment_decline_rate=0,
        out_of_stock_rate=0,
        shipping_delay_rate=0,
        shipping_timeout_rate=0,
    )
    assert {expected_outcome(o, calm).state for o in order_events(calm)} == {COMPLETED}
    doomed = replace(calm, shipping_timeout_rate=1.0)
    outs = {expected_outcome(o, doomed).reason for o in order_events(doomed)}
    assert outs == {SHIPPING_TIMEOUT}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payment_decline_rate": 1.5},
        {"out_of_stock_rate": -0.1},
        {"shipping_delay_rate": 0.6, "shipping_timeout_rate": 0.6},
        {"max_items": 0},
        {"skus": 2, "max_items": 3},
        {"shipping_timeout_ms": 0},
        {"count": -1},
    ],
)
def test_bad_specs_fail_with_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        OrdersSpec(**kwargs)


def test_package_exports() -> None:
    assert gen.order_events is order_events and gen.expected_outcome is expected_outcome
    assert gen.fate is fate and gen.OrdersSpec is OrdersSpec
    pairs = list(gen.encode_records(order_events(OrdersSpec(count=3)), "order_id"))
    assert [k for k, _ in pairs] == [b"o000000000", b"o000000001", b"o000000002"]
    # The submodules stay reachable as modules (no package-level name hides them).
    import raystream.generate.orders as orders_module
    import raystream.generate.payments as payments_module

    assert orders_module.order_events is order_events
    assert callable(payments_module.payments)
