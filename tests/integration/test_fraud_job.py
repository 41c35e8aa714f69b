"""jobs/fraud_detection.py on Ray over generated payments with ground truth: every injected
fraud instance raises its alert exactly once (precision and recall 1.0), a clean stream raises
none, and the views answer the same by SQL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import raystream as rs
from jobs.fraud_detection import TOP_ALERTS_SQL, FraudTopics, build, ensure_topics
from jobs.views_ready import wait_for_views
from raystream.dev.broker import EmbeddedBroker
from raystream.generate.fraud import PATTERNS, FraudSpec, detect, fraud_payments
from raystream.generate.payments import customer_profiles
from raystream.generate.publish import PaymentTopics, publish_payments

from .kafka_helpers import read_all

PARTITIONS = 4


def run_job(broker: EmbeddedBroker, unique: str, tmp_path: Path, spec: FraudSpec):  # type: ignore[no-untyped-def]
    topics = FraudTopics(f"{unique}.")
    published = publish_payments(
        broker.bootstrap,
        spec,
        topics=PaymentTopics(topics.payments, topics.customers, topics.merchants),
        partitions=PARTITIONS,
        truth=tmp_path / "truth.jsonl",
    )
    assert published.count == spec.count
    app = rs.App(unique, brokers=broker.bootstrap, checkpoints=(tmp_path / "ck").as_uri())
    build(app, topics)
    ensure_topics(app, topics)
    running = app.start(workers=2, bounded=True)
    try:
        assert running.wait(timeout=300) == "finished", running.status()
        wait_for_views(app)
        views = {
            name: app.sql(f"SELECT * FROM {name}").to_pylist()
            for name in ("customer_risk", "alerts_by_rule", "merchant_stats")
        }
        # An empty view has no columns yet: ask for the top only when there are alerts.
        top = app.sql(TOP_ALERTS_SQL.format(limit=5)).to_pylist() if views["customer_risk"] else []
    finally:
        result = running.stop()
    assert result.state == "finished" and result.dead_letters == 0, result.status
    alerts = [m.json() for m in read_all(broker.bootstrap, topics.alerts)]
    return published, alerts, views, top


def found(alerts: list[dict]) -> Counter:
    return Counter(
        (a["rule"], a["customer_id"], tuple(sorted(a["evidence"]["payment_ids"]))) for a in alerts
    )


def test_every_injected_pattern_raises_its_alert_exactly_once(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    spec = FraudSpec(count=20_000, customers=1_000, merchants=100, seed=21, instances_per_pattern=6)
    published, alerts, views, top = run_job(broker, unique, tmp_path, spec)
    truth = published.truth
    assert Counter(t.pattern for t in truth) == {p: 6 for p in PATTERNS}

    expected = Counter((t.pattern, t.customer_id, tuple(sorted(t.payment_ids))) for t in truth)
    got = found(alerts)
    true_positives = sum((got & expected).values())
    precision, recall = true_positives / len(alerts), true_positives / len(truth)
    print(
        f"\n{len(alerts)} alerts for {len(truth)} instances: precision {precision}, recall {recall}"
    )
    assert (precision, recall) == (1.0, 1.0), (got - expected, expected - got)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # each exactly once
    # The job agrees with the generator's reference detector, window bounds included.
    stream, _ = fraud_payments(spec)
    reference = detect(stream, customer_profiles(spec.payments_spec()), spec.rules)
    windows = {(a["rule"], a["customer_id"]): (a["window_start"], a["window_end"]) for a in alerts}
    assert {
        (r.pattern, r.customer_id): (r.window_start, r.window_end) for r in reference
    } == windows
    for a in alerts:
        assert 0.5 <= a["score"] < 1.0 and a["evidence"]["observed"] >= a["evidence"]["threshold"]

    by_rule = {r["rule"]: r for r in views["alerts_by_rule"]}
    assert {rule: r["alerts"] for rule, r in by_rule.items()} == {p: 6 for p in PATTERNS}
    per_customer = Counter(t.customer_id for t in truth)
    assert {r["customer_id"]: r["alerts"] for r in views["customer_risk"]} == per_customer
    assert sum(r["payments"] for r in views["merchant_stats"]) == spec.count
    assert len(views["merchant_stats"]) == spec.merchants
    assert top[0]["risk"] == round(max(r["risk"] for r in views["customer_risk"]), 3)


def test_a_clean_stream_raises_no_alert(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    spec = FraudSpec(count=20_000, customers=1_000, merchants=100, seed=22, clean=True)
    published, alerts, views, _ = run_job(broker, unique, tmp_path, spec)
    assert published.truth == []
    assert alerts == []
    assert views["customer_risk"] == [] and views["alerts_by_rule"] == []
    assert sum(r["payments"] for r in views["merchant_stats"]) == spec.count
