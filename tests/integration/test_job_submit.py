"""`ray job submit` of a real job to `raystream dev up`, as a user would do it."""

from __future__ import annotations

import json

from raystream.dev.stack import DevState
from raystream.generate.payments import PaymentsSpec, encoded, payments
from raystream.generate.produce import produce_records

from .kafka_helpers import create_topic, read_all
from .ray_jobs import submit


def test_job_submitted_with_ray_job_submit_runs_and_succeeds(dev_stack: DevState) -> None:
    spec = PaymentsSpec(count=20_000, customers=500, merchants=50, seed=3)
    create_topic(dev_stack.broker_bootstrap, "submit.payments", 4)
    produce_records(dev_stack.broker_bootstrap, "submit.payments", encoded(spec))
    logs = submit(
        dev_stack,
        "submit-route-1",
        "jobs/route_payments.py",
        "--app", "submit-route", "--source", "submit.payments",
        "--workers", "2", "--bounded",
        wait_s=240,
    )  # fmt: skip
    assert "submit-route: finished; in=20000" in logs

    review = read_all(dev_stack.broker_bootstrap, "submit.payments.review")
    approved = read_all(dev_stack.broker_bootstrap, "submit.payments.approved")
    expected_review = sorted(p["payment_id"] for p in payments(spec) if p["amount"] >= 500)
    assert sorted(m.json()["payment_id"] for m in review) == expected_review
    assert len(review) + len(approved) == spec.count
    assert all(json.loads(m.value)["reason"] == "amount" for m in review)
