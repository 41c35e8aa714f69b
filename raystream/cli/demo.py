"""``raystream demo``: the dev stack, generated payments, a real job on Ray, and what it did."""

from __future__ import annotations

import argparse
import os
import sys
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
            "generate payments, route them with a raystream job on Ray, and print the counts."
        ),
    )
    p.add_argument("--payments", type=int, default=50_000, help="payments to generate")
    p.add_argument("--workers", type=int, default=2, help="worker actors")
    p.add_argument("--partitions", type=int, default=8, help="partitions of the payments topic")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: time-based)")
    p.add_argument(
        "--down", action="store_true", help="stop the dev stack at the end (default: keep it)"
    )
    p.set_defaults(handler=run_demo)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _progress(total: int) -> Any:
    def show(n: int) -> None:
        width = 30
        done = int(width * n / max(total, 1))
        sys.stdout.write(f"\r  [{'#' * done}{'.' * (width - done)}] {n:,}/{total:,}")
        sys.stdout.flush()
        if n >= total:
            sys.stdout.write("\n")

    return show


def run_demo(args: argparse.Namespace) -> int:
    """The demo, step by step."""
    from jobs.route_payments import build as build_route_payments
    from raystream._kafka.admin import Topics
    from raystream.app import App
    from raystream.config import KafkaConfig
    from raystream.dev.stack import dev_down, dev_up
    from raystream.generate.payments import PaymentsSpec, encoded
    from raystream.generate.produce import produce_records

    _say("1/4 dev stack: embedded Kafka broker + local Ray head with the dashboard")
    state = dev_up(args.home, notify=lambda m: _say(f"  {m}"))
    os.environ.update(state.environment())
    _say(f"  broker {state.broker_bootstrap}, Ray {state.ray_address}")

    topics = Topics(KafkaConfig(state.broker_bootstrap))
    topics.ensure({"payments": args.partitions})
    seed = args.seed if args.seed is not None else int(time.time())
    _say(f"2/4 generating {args.payments:,} payments (seed {seed}) into topic 'payments'")
    produce_records(
        state.broker_bootstrap,
        "payments",
        encoded(PaymentsSpec(count=args.payments, customers=5_000, merchants=200, seed=seed)),
        progress=_progress(args.payments),
    )

    _say(f"3/4 running job 'route-payments' on Ray with {args.workers} workers (bounded)")
    app = App("route-payments", brokers=state.broker_bootstrap)
    build_route_payments(app, "payments")
    result = app.run(workers=args.workers, bounded=True, ray_address=state.ray_address)

    _say("4/4 result")
    rate = result.records_in / result.seconds if result.seconds else 0.0
    _say(f"  state          {result.state}")
    _say(f"  payments read  {result.records_in:,}")
    _say(f"  records out    {result.records_out:,} ({rate:,.0f} payments/s incl. startup)")
    _say(f"  dead letters   {result.dead_letters:,}")
    for slot, w in sorted(result.status["workers"].items()):
        _say(f"  worker-{slot}  pid {w['pid']}  in {w['records_in']:,}  out {w['records_out']:,}")
    _say(f"\nRay dashboard: {state.dashboard_url}")
    if args.down:
        import ray

        # Disconnect first: a driver whose head disappears exits with an error after a minute.
        ray.shutdown()
        dev_down(args.home)
        _say("dev stack stopped")
    else:
        _say("The dev stack keeps running; stop it with: raystream dev down")
    return 0 if result.state == "finished" else 1
