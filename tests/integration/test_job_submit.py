"""`ray job submit` of a real job to `raystream dev up`, as a user would do it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from raystream.dev.stack import DevState
from raystream.generate.payments import PaymentsSpec, encoded, payments
from raystream.generate.produce import produce_records

from .kafka_helpers import create_topic, read_all

REPO = Path(__file__).resolve().parents[2]


def test_job_submitted_with_ray_job_submit_runs_and_succeeds(dev_stack: DevState) -> None:
    spec = PaymentsSpec(count=20_000, customers=500, merchants=50, seed=3)
    create_topic(dev_stack.broker_bootstrap, "submit.payments", 4)
    produce_records(dev_stack.broker_bootstrap, "submit.payments", encoded(spec))
    env = {**os.environ, **dev_stack.environment()}
    ray_bin = str(Path(sys.executable).parent / "ray")
    address = ["--address", dev_stack.dashboard_url]
    submit = subprocess.run(
        [
            ray_bin, "job", "submit", *address, "--no-wait",
            "--submission-id", "submit-route-1",
            "--working-dir", str(REPO),
            "--",
            "python", "jobs/route_payments.py",
            "--app", "submit-route", "--source", "submit.payments",
            "--workers", "2", "--bounded",
        ],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    status = ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = subprocess.run(
            [ray_bin, "job", "status", *address, "submit-route-1"],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout.lower()  # fmt: skip
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(1)
    logs = subprocess.run(
        [ray_bin, "job", "logs", *address, "submit-route-1"],
        env=env, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "succeeded" in status, status[-2000:] + "\n--- job logs ---\n" + logs[-5000:]
    assert "submit-route: finished; in=20000" in logs

    review = read_all(dev_stack.broker_bootstrap, "submit.payments.review")
    approved = read_all(dev_stack.broker_bootstrap, "submit.payments.approved")
    expected_review = sorted(p["payment_id"] for p in payments(spec) if p["amount"] >= 500)
    assert sorted(m.json()["payment_id"] for m in review) == expected_review
    assert len(review) + len(approved) == spec.count
    assert all(json.loads(m.value)["reason"] == "amount" for m in review)
