"""Real-time fraud detection: enriched payments, windowed features, rules, alerts and SQL views.

    raystream generate payments --count 100000 --truth truth.jsonl
    python jobs/fraud_detection.py --workers 2 --bounded
    ray job submit --working-dir . -- python jobs/fraud_detection.py --bounded

The flow (topics in quotes):

* ``payments`` (keyed by ``customer_id``, event time ``ts``) joined with the ``customers``
  table (segment, home country, typical amount; co-partitioned) and the ``merchants`` global
  table (category, country as ``merchant_country``).
* Rules (the thresholds of :class:`raystream.generate.fraud.FraudRules`, which the generator's
  ground truth follows), each alert carrying its rule, a score and its evidence, to
  ``fraud.alerts``:
  - ``amount_spike``, ``country_mismatch``: per payment, against the customer's own profile;
  - ``velocity`` (count, tumbling 1 min), ``many_merchants`` (distinct merchants, tumbling 5 min),
    ``card_testing`` (tiny amounts, tumbling 5 min): per customer, one alert per window.
* Features per customer to ``fraud.features``: spend over hopping windows (1 h every 15 min)
  and activity sessions (30 min of inactivity closes one).
* Views (``app.sql``, ``raystream sql``): ``customer_risk`` and ``alerts_by_rule`` (read back
  from ``fraud.alerts``), ``merchant_stats`` (from the enriched payments, re-keyed by merchant).

Scores are in [0.5, 1): ``1 - threshold / (2 * observed)``, 0.5 right at the threshold.
"""

from __future__ import annotations

import argparse
from typing import Any

import raystream as rs
from raystream.generate.fraud import (
    AMOUNT_SPIKE,
    CARD_TESTING,
    COUNTRY_MISMATCH,
    MANY_MERCHANTS,
    VELOCITY,
    FraudRules,
)


class FraudTopics:
    """The topics the job reads and writes."""

    def __init__(self, prefix: str = "") -> None:
        self.payments = f"{prefix}payments"
        self.customers = f"{prefix}customers"
        self.merchants = f"{prefix}merchants"
        self.alerts = f"{prefix}fraud.alerts"
        self.features = f"{prefix}fraud.features"


#: Most payment ids an alert lists as evidence.
EVIDENCE_LIMIT = 100


def score(observed: float, threshold: float) -> float:
    """How far past its threshold a rule fired: 0.5 at the threshold, towards 1 beyond."""
    return round(1.0 - threshold / (2.0 * observed), 4) if observed > 0 else 0.0


def payment_alert(
    rule: str, p: dict[str, Any], observed: float, threshold: float
) -> dict[str, Any]:
    """The alert of a per-payment rule: the payment is the evidence."""
    return {
        "alert_id": f"{rule}:{p['payment_id']}",
        "rule": rule,
        "customer_id": p["customer_id"],
        "score": score(observed, threshold),
        "ts": p["ts"],
        "window_start": None,
        "window_end": None,
        "evidence": {
            "payment_ids": [p["payment_id"]],
            "observed": round(float(observed), 4),
            "threshold": float(threshold),
            "amount": float(p["amount"]),
            "detail": (
                f"{p['amount']:.2f} EUR in {p['country']} (home {p['home_country']}, typical "
                f"{p['typical_amount']:.2f}) at {p['merchant_id']}"
            ),
        },
    }


def window_alert(rule: str, w: dict[str, Any], observed: float, threshold: float) -> dict[str, Any]:
    """The alert of a windowed rule: the window's payments are the evidence."""
    return {
        "alert_id": f"{rule}:{w['customer_id']}:{w['window_start']}",
        "rule": rule,
        "customer_id": w["customer_id"],
        "score": score(observed, threshold),
        "ts": w["last_ts"],
        "window_start": w["window_start"],
        "window_end": w["window_end"],
        "evidence": {
            "payment_ids": list(w["payment_ids"]),
            "observed": round(float(observed), 4),
            "threshold": float(threshold),
            "amount": round(float(w["total"]), 2),
            "detail": f"{w['n']} payments, {w['merchants']} merchants in the window",
        },
    }


def _window_aggs() -> dict[str, Any]:
    return {
        "n": rs.count(),
        "merchants": rs.count_distinct("merchant_id"),
        "total": rs.sum("amount"),
        "first_ts": rs.min("ts"),
        "last_ts": rs.max("ts"),
        "payment_ids": rs.collect("payment_id", limit=EVIDENCE_LIMIT),
    }


def build(app: rs.App, topics: FraudTopics | None = None, rules: FraudRules | None = None) -> None:
    """The fraud topology on ``app``."""
    t = topics or FraudTopics()
    r = rules or FraudRules()
    customers = app.table(t.customers, key="customer_id")
    merchants = app.global_table(t.merchants, key="merchant_id")
    enriched = (
        app.stream(t.payments, key="customer_id", time="ts")
        .join(customers, how="left", name="with_customer")
        .join(merchants, on="merchant_id", how="left", right_prefix="merchant_", name="enriched")
    )
    profiled = enriched.filter(lambda p: p["typical_amount"] is not None, name="profiled")

    # Per-payment rules, against the customer's own history (its typical amount, home country).
    profiled.filter(lambda p: r.is_spike(p["amount"], p["typical_amount"]), name="spike_rule").map(
        lambda p: payment_alert(AMOUNT_SPIKE, p, p["amount"] / p["typical_amount"], r.spike_factor),
        name="spike_alert",
    ).to(t.alerts)
    profiled.filter(
        lambda p: r.is_mismatch(p["amount"], p["country"], p["home_country"], p["typical_amount"]),
        name="mismatch_rule",
    ).map(
        lambda p: payment_alert(
            COUNTRY_MISMATCH, p, p["amount"] / p["typical_amount"], r.mismatch_factor
        ),
        name="mismatch_alert",
    ).to(t.alerts)

    # Windowed rules: tumbling windows per customer, one alert per window that trips.
    (
        enriched.group_by("customer_id")
        .window(rs.tumbling(r.velocity_window_ms))
        .agg(name="velocity_window", **_window_aggs())
        .filter(lambda w: w["n"] >= r.velocity_count, name="velocity_rule")
        .map(lambda w: window_alert(VELOCITY, w, w["n"], r.velocity_count), name="velocity_alert")
        .to(t.alerts)
    )
    (
        enriched.group_by("customer_id")
        .window(rs.tumbling(r.merchants_window_ms))
        .agg(name="merchants_window", **_window_aggs())
        .filter(lambda w: w["merchants"] >= r.merchants_count, name="merchants_rule")
        .map(
            lambda w: window_alert(MANY_MERCHANTS, w, w["merchants"], r.merchants_count),
            name="merchants_alert",
        )
        .to(t.alerts)
    )
    (
        enriched.filter(lambda p: r.is_tiny(p["amount"]), name="tiny")
        .group_by("customer_id")
        .window(rs.tumbling(r.card_testing_window_ms))
        .agg(name="card_testing_window", **_window_aggs())
        .filter(lambda w: w["n"] >= r.card_testing_count, name="card_testing_rule")
        .map(
            lambda w: window_alert(CARD_TESTING, w, w["n"], r.card_testing_count),
            name="card_testing_alert",
        )
        .to(t.alerts)
    )

    # Features for downstream scoring: hopping spend and activity sessions per customer.
    (
        enriched.group_by("customer_id")
        .window(rs.hopping("1h", "15m"))
        .agg(n=rs.count(), spend=rs.sum("amount"), countries=rs.count_distinct("country"))
        .map(lambda w: {**w, "feature": "spend_1h"}, name="hopping_feature")
        .to(t.features)
    )
    (
        enriched.group_by("customer_id")
        .window(rs.session("30m"))
        .agg(n=rs.count(), spend=rs.sum("amount"), merchants=rs.count_distinct("merchant_id"))
        .map(lambda w: {**w, "feature": "session"}, name="session_feature")
        .to(t.features)
    )

    # Views. merchant_stats re-keys the enriched payments by merchant (a repartition topic).
    (
        enriched.group_by("merchant_id", name="by_merchant")
        .agg(
            payments=rs.count(),
            volume=rs.sum("amount"),
            customers=rs.count_distinct("customer_id"),
            largest=rs.max("amount"),
            category=rs.last("category"),
            name="merchant_totals",
        )
        .materialize("merchant_stats")
    )
    alerts = app.stream(t.alerts, key="customer_id", time="ts")
    (
        alerts.group_by("customer_id")
        .agg(
            alerts=rs.count(),
            risk=rs.sum("score"),
            max_score=rs.max("score"),
            rules=rs.count_distinct("rule"),
            last_rule=rs.last("rule"),
            last_alert_ts=rs.max("ts"),
            name="customer_alerts",
        )
        .materialize("customer_risk")
    )
    (
        alerts.group_by("rule", name="by_rule")
        .agg(
            alerts=rs.count(),
            customers=rs.count_distinct("customer_id"),
            mean_score=rs.mean("score"),
            max_score=rs.max("score"),
            name="rule_totals",
        )
        .materialize("alerts_by_rule")
    )


def ensure_topics(app: rs.App, topics: FraudTopics | None = None) -> None:
    """Create the alerts topic before the app starts (it reads it back for two views), with as
    many partitions as the payments."""
    from raystream._kafka.admin import Topics

    t = topics or FraudTopics()
    admin = Topics(app.kafka_config())
    (payments,) = admin.require([t.payments]).values()
    admin.ensure({t.alerts: payments})


TOP_ALERTS_SQL = (
    "SELECT customer_id, alerts, round(risk, 3) AS risk, round(max_score, 3) AS max_score, "
    "last_rule FROM customer_risk ORDER BY risk DESC, customer_id LIMIT {limit}"
)
BY_RULE_SQL = (
    "SELECT rule, alerts, customers, round(mean_score, 3) AS mean_score FROM alerts_by_rule "
    "ORDER BY alerts DESC, rule"
)


def main(argv: list[str] | None = None) -> rs.RunResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", default="fraud-detection")
    parser.add_argument("--prefix", default="", help="prefix of every topic name")
    parser.add_argument("--brokers", default=None, help="default: RAYSTREAM_BROKERS or dev stack")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many s")
    parser.add_argument("--top", type=int, default=10, help="top customers printed at the end")
    args = parser.parse_args(argv)
    topics = FraudTopics(args.prefix)
    app = rs.App(args.app, brokers=args.brokers)
    build(app, topics)
    ensure_topics(app, topics)
    running = app.start(workers=args.workers, bounded=args.bounded)
    try:
        state = running.wait(args.timeout)
        if state == "finished":
            print_views(app, args.top)
    except KeyboardInterrupt:
        pass
    finally:
        result = running.stop()
    print(
        f"{args.app}: {result.state}; in={result.records_in} out={result.records_out} "
        f"dead_letters={result.dead_letters} in {result.seconds:.1f}s"
    )
    return result


def print_views(app: rs.App, top: int = 10) -> None:
    """Print the alerts per rule and the riskiest customers, by SQL over the views."""
    from jobs.views_ready import wait_for_views

    wait_for_views(app)
    rows = {v["name"]: v["rows"] for v in app.views()}
    for title, view, query in (
        ("alerts by rule", "alerts_by_rule", BY_RULE_SQL),
        (f"top {top} customers by risk", "customer_risk", TOP_ALERTS_SQL.format(limit=top)),
    ):
        print(f"-- {title}")
        if not rows.get(view):  # an empty view has no columns to select yet
            print("(no alerts)")
            continue
        table = app.sql(query)
        print(_format(table.to_pylist(), table.column_names))


def _format(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(0 if main().state in ("finished", "stopped") else 1)
