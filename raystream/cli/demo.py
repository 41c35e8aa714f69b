"""``raystream demo``: the dev stack, generated payments with fraud, the fraud-detection job on Ray,
and its top alerts by SQL over the job's views."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``raystream demo``."""
    p = subparsers.add_parser(
        "demo",
        parents=[common],
        help="run the demo on the dev stack (starts it when needed)",
        description=(
            "Start the dev stack (embedded broker + local Ray with dashboard) if it is not up, "
            "generate payments with injected fraud, run the fraud-detection job on Ray, and "
            "print its alerts per rule and the riskiest customers by SQL."
        ),
    )
    p.add_argument("--payments", type=int, default=50_000, help="payments to generate")
    p.add_argument("--workers", type=int, default=2, help="worker actors")
    p.add_argument("--partitions", type=int, default=8, help="partitions of the payments topic")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: time-based)")
    p.add_argument(
        "--down",
        action="store_true",
        help="stop the dev stack at the end, also if the demo fails or is stopped (default: keep)",
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, help="give up on the job after this many seconds"
    )
    p.set_defaults(handler=run_demo)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _progress(total: int) -> Any:
    shown = [-1]

    def show(n: int) -> None:
        if n == shown[0]:
            return
        shown[0] = n
        width = 30
        done = int(width * n / max(total, 1))
        sys.stdout.write(f"\r  [{'#' * done}{'.' * (width - done)}] {n:,}/{total:,}")
        sys.stdout.flush()
        if n >= total:
            sys.stdout.write("\n")

    return show


def run_demo(args: argparse.Namespace) -> int:
    """The demo, step by step."""
    from raystream.dev.stack import dev_down, dev_up

    _say("1/4 dev stack: embedded Kafka broker + local Ray head with the dashboard")
    state = dev_up(args.home, notify=lambda m: _say(f"  {m}"))
    # A SIGTERM (a CI timeout, `kill`) must still reach the finally below and stop the stack.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        return _demo(args, state)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if args.down:
            import ray

            # Disconnect first: a driver whose head disappears exits with an error after a minute.
            ray.shutdown()
            dev_down(args.home)
            _say("dev stack stopped")
        else:
            _say("The dev stack keeps running; stop it with: raystream dev down")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _demo(args: argparse.Namespace, state: Any) -> int:
    """Steps 2-4, on the running dev stack ``state``."""
    from jobs.fraud_detection import BY_RULE_SQL, TOP_ALERTS_SQL, FraudTopics, build, ensure_topics
    from jobs.views_ready import wait_for_views
    from raystream.app import App
    from raystream.generate.fraud import FraudSpec
    from raystream.generate.publish import PaymentTopics, publish_payments

    os.environ.update(state.environment())
    _say(f"  broker {state.broker_bootstrap}, Ray {state.ray_address}")

    seed = args.seed if args.seed is not None else int(time.time())
    run_id = f"demo-{seed}-{int(time.time())}"
    topics = FraudTopics(f"{run_id}.")
    spec = FraudSpec(count=args.payments, customers=5_000, merchants=200, seed=seed)
    _say(
        f"2/4 generating {args.payments:,} payments (seed {seed}, {spec.instances()} fraud "
        f"instances per pattern) into topic {topics.payments!r}"
    )
    show = _progress(args.payments)
    published = publish_payments(
        state.broker_bootstrap,
        spec,
        topics=PaymentTopics(topics.payments, topics.customers, topics.merchants),
        partitions=args.partitions,
        progress=lambda n, _: show(n),
    )

    _say(f"3/4 running job 'fraud-detection' on Ray with {args.workers} workers (bounded)")
    app = App(run_id, brokers=state.broker_bootstrap)
    build(app, topics)
    ensure_topics(app, topics)
    running = app.start(workers=args.workers, bounded=True, ray_address=state.ray_address)
    by_rule: list[dict[str, Any]] = []
    top: list[dict[str, Any]] = []
    try:
        state_now = running.wait(args.timeout)
        finished = state_now == "finished"
        if state_now == "running":
            _say(f"  the job did not finish in {args.timeout:.0f}s: stopping it")
        if finished:
            wait_for_views(app)
            by_rule = app.sql(BY_RULE_SQL).to_pylist()
            top = app.sql(TOP_ALERTS_SQL.format(limit=5)).to_pylist() if by_rule else []
    finally:
        result = running.stop()

    _say("4/4 result")
    rate = result.records_in / result.seconds if result.seconds else 0.0
    _say(f"  state          {result.state}")
    _say(f"  records in     {result.records_in:,} ({rate:,.0f}/s incl. startup)")
    _say(f"  records out    {result.records_out:,}")
    _say(f"  dead letters   {result.dead_letters:,}")
    for slot, w in sorted(result.status["workers"].items()):
        _say(f"  worker-{slot}  pid {w['pid']}  in {w['records_in']:,}  out {w['records_out']:,}")
    if finished:
        alerts = sum(r["alerts"] for r in by_rule)
        _say(
            f"  alerts         {alerts:,} for {len(published.truth):,} injected instances "
            f"(topic {topics.alerts!r})"
        )
        _say("\n  SQL> " + BY_RULE_SQL)
        for r in by_rule:
            _say(f"  {r['rule']:<18} {r['alerts']:>5} alerts  mean score {r['mean_score']}")
        _say("\n  SQL> " + TOP_ALERTS_SQL.format(limit=5))
        for r in top:
            _say(
                f"  {r['customer_id']}  risk {r['risk']:<6} alerts {r['alerts']}  "
                f"max score {r['max_score']}  last rule {r['last_rule']}"
            )
    _say(f"\nRay dashboard: {state.dashboard_url}")
    return 0 if result.state == "finished" else 1
