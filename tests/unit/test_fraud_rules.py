"""The fraud job's topology on generated traffic, without Kafka or Ray: every injected instance
raises exactly its alert, a clean stream raises none (the end-to-end test runs it on Ray)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import raystream as rs
from jobs.fraud_detection import FraudTopics, build
from raystream.generate.fraud import PATTERNS, FraudSpec, fraud_payments
from raystream.generate.payments import customer_profiles, merchants
from raystream.testing import TopologyTestDriver

T = FraudTopics()


def run(spec: FraudSpec) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
    app = rs.App("fraud-unit", brokers="unused:9092")
    build(app, T)
    driver = TopologyTestDriver(app, partitions=1)
    base = spec.payments_spec()
    profiles = customer_profiles(base)
    driver.pipe(T.customers, profiles, keys=[c["customer_id"] for c in profiles])
    shops = merchants(base)
    driver.pipe(T.merchants, shops, keys=[m["merchant_id"] for m in shops])
    stream, truth = fraud_payments(spec)
    rows = list(stream)
    for i in range(0, len(rows), 500):
        chunk = rows[i : i + 500]
        driver.pipe(T.payments, chunk, keys=[p["customer_id"] for p in chunk])
    driver.finish()
    alerts = driver.read_values(T.alerts)
    return alerts, truth, rows


def as_found(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str, tuple[str, ...]]]:
    return Counter(
        (a["rule"], a["customer_id"], tuple(sorted(a["evidence"]["payment_ids"]))) for a in alerts
    )


def test_every_injected_instance_raises_its_alert_exactly_once() -> None:
    spec = FraudSpec(count=6_000, customers=300, merchants=40, seed=11, instances_per_pattern=4)
    alerts, truth, _ = run(spec)
    expected = Counter((t.pattern, t.customer_id, tuple(sorted(t.payment_ids))) for t in truth)
    assert len(truth) == 4 * len(PATTERNS)
    assert as_found(alerts) == expected
    for a in alerts:
        assert 0.5 <= a["score"] < 1.0, a
        assert a["evidence"]["observed"] >= a["evidence"]["threshold"], a


@pytest.mark.parametrize("seed", [3, 4])
def test_a_clean_stream_raises_no_alert(seed: int) -> None:
    alerts, truth, rows = run(
        FraudSpec(count=6_000, customers=300, merchants=40, seed=seed, clean=True)
    )
    assert truth == [] and len(rows) == 6_000
    assert alerts == []
