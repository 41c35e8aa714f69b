"""The two flagship jobs submitted with `ray job submit --working-dir .` to `raystream dev up`,
as the README shows: the fraud job (bounded) prints every rule's alerts, the order job (for a
while) prints every order in the state its fate implies."""

from __future__ import annotations

import re
from collections import Counter

from raystream.dev.stack import DevState
from raystream.generate.fraud import PATTERNS, FraudSpec
from raystream.generate.orders import OrdersSpec
from raystream.generate.publish import PaymentTopics, publish_orders, publish_payments

from .ray_jobs import submit


def test_fraud_job_submitted_to_the_dev_stack(dev_stack: DevState) -> None:
    spec = FraudSpec(count=10_000, seed=41, instances_per_pattern=3)
    publish_payments(
        dev_stack.broker_bootstrap,
        spec,
        topics=PaymentTopics("sub.payments", "sub.customers", "sub.merchants"),
        partitions=4,
    )
    logs = submit(
        dev_stack, "fraud-1", "jobs/fraud_detection.py",
        "--app", "sub-fraud", "--prefix", "sub.", "--workers", "2", "--bounded",
    )  # fmt: skip
    assert "sub-fraud: finished" in logs and "dead_letters=0" in logs
    table = logs[logs.find("-- alerts by rule") :][:3000]
    for rule in PATTERNS:
        assert re.search(rf"^{rule} +3 +3 ", logs, re.MULTILINE), (rule, table)


def test_order_job_submitted_to_the_dev_stack(dev_stack: DevState) -> None:
    spec = OrdersSpec(count=400, seed=42, shipping_timeout_ms=3_000)
    published = publish_orders(dev_stack.broker_bootstrap, spec, topic="sub.orders", partitions=4)
    logs = submit(
        dev_stack, "orders-1", "jobs/order_processing.py",
        "--app", "sub-orders", "--prefix", "sub.", "--workers", "2", "--timeout", "30",
        "--seed", "42", "--shipping-timeout-ms", "3000",
    )  # fmt: skip
    assert "sub-orders: stopped" in logs and "dead_letters=0" in logs
    want = Counter((t["state"], t["reason"] or "") for t in published.truth)
    got = Counter()
    for state, reason, n in re.findall(r"^  (Completed|Cancelled) +(\w*) +([\d,]+) ", logs, re.M):
        got[(state, reason)] = int(n.replace(",", ""))
    assert got == want, logs[-3000:]
