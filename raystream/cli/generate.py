"""``raystream generate payments|orders``: seeded traffic with ground truth, written to Kafka.

    raystream generate payments --count 100000 --seed 7 --truth fraud-truth.jsonl
    raystream generate orders --duration 60 --rate 167 --truth orders-truth.jsonl

A progress bar goes to stderr; one summary line to stdout. The broker is ``--brokers``, else
RAYSTREAM_BROKERS, else the running dev stack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from raystream.errors import ConfigError

#: Payments generated for ``--duration`` without ``--count`` or ``--rate`` (a ceiling).
UNPACED_DURATION_COUNT = 2_000_000


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``generate`` group: ``payments`` and ``orders``."""
    group = subparsers.add_parser(
        "generate",
        parents=[common],
        help="write seeded payments or orders (with ground truth) to Kafka",
        description="Realistic keyed event streams for the jobs, at a target rate or as fast as "
        "possible, for a count or a duration, deterministic for a seed.",
    )
    group.set_defaults(group_parser=group)
    kinds = group.add_subparsers(title="streams", metavar="STREAM")

    pay = kinds.add_parser(
        "payments",
        parents=[common],
        help="payments with injected fraud, plus the customers and merchants tables",
    )
    _shared(pay, topic="payments")
    pay.add_argument("--customers", type=_positive, default=1_000, help="customers (1000)")
    pay.add_argument("--merchants", type=_positive, default=100, help="merchants (100)")
    pay.add_argument(
        "--instances",
        type=int,
        default=None,
        help="fraud instances per pattern (default: one per 1000 payments)",
    )
    pay.add_argument("--clean", action="store_true", help="inject no fraud")
    pay.add_argument("--customers-topic", default="customers")
    pay.add_argument("--merchants-topic", default="merchants")
    pay.set_defaults(handler=_payments)

    orders = kinds.add_parser(
        "orders", parents=[common], help="OrderCreated events with per-order service fates"
    )
    _shared(orders, topic="orders")
    orders.add_argument("--customers", type=_positive, default=500)
    orders.add_argument("--decline-rate", type=_rate, default=0.10, help="payment declined")
    orders.add_argument("--out-of-stock-rate", type=_rate, default=0.05)
    orders.add_argument("--shipping-delay-rate", type=_rate, default=0.10, help="late, in time")
    orders.add_argument("--shipping-timeout-rate", type=_rate, default=0.05, help="too late")
    orders.add_argument(
        "--shipping-timeout-ms",
        type=_positive,
        default=30_000,
        help="how long the saga waits for the shipping confirmation (30000)",
    )
    orders.set_defaults(handler=_orders)


def _shared(p: argparse.ArgumentParser, topic: str) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--count", type=_positive, help="records to write")
    size.add_argument("--duration", type=float, help="seconds to write for")
    p.add_argument("--rate", type=float, default=0.0, help="records/s (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--brokers", default=None, help="default: RAYSTREAM_BROKERS or the dev stack")
    p.add_argument("--topic", default=topic, help=f"topic to write ({topic})")
    p.add_argument("--partitions", type=_positive, default=8, help="partitions of new topics")
    p.add_argument("--truth", type=Path, default=None, metavar="FILE", help="ground truth (JSONL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {value}")
    return value


def _brokers(args: argparse.Namespace) -> str:
    from raystream.config import brokers_from_env

    brokers = args.brokers or brokers_from_env()
    if not brokers:
        raise ConfigError(
            "no broker: pass --brokers host:port, set RAYSTREAM_BROKERS, or start the dev "
            "stack with `raystream dev up`"
        )
    return str(brokers)


def _count(args: argparse.Namespace, default: int, unpaced_duration: int) -> int:
    if args.count is not None:
        return int(args.count)
    if args.duration is None:
        return default
    if args.duration <= 0:
        raise ConfigError(f"--duration must be positive, got {args.duration}")
    if args.rate > 0:
        return int(args.rate * args.duration) + 1
    return unpaced_duration


class ProgressBar:
    """A one-line progress bar on ``out`` (stderr): towards a record count, or a duration."""

    def __init__(
        self, total: int | None, seconds: float | None, out: TextIO = sys.stderr, width: int = 30
    ) -> None:
        self.total = total
        self.seconds = seconds
        self.out = out
        self.width = width

    def __call__(self, n: int, elapsed: float) -> None:
        """Redraw for ``n`` records written in ``elapsed`` seconds."""
        if self.seconds is not None:
            done = min(elapsed / self.seconds, 1.0)
        else:
            done = min(n / max(self.total or 1, 1), 1.0)
        fill = int(self.width * done)
        rate = n / elapsed if elapsed > 0 else 0.0
        self.out.write(
            f"\r  [{'#' * fill}{'.' * (self.width - fill)}] {n:,} records, {elapsed:,.1f}s, "
            f"{rate:,.0f}/s "
        )
        self.out.flush()

    def close(self) -> None:
        """End the line."""
        self.out.write("\n")
        self.out.flush()


def _bar(args: argparse.Namespace, count: int) -> ProgressBar | None:
    if args.quiet:
        return None
    return ProgressBar(None if args.duration else count, args.duration)


def _payments(args: argparse.Namespace) -> int:
    from raystream.generate.fraud import FraudSpec
    from raystream.generate.publish import PaymentTopics, publish_payments

    count = _count(args, 10_000, UNPACED_DURATION_COUNT)
    spec = FraudSpec(
        count=count,
        customers=args.customers,
        merchants=args.merchants,
        seed=args.seed,
        instances_per_pattern=args.instances,
        clean=args.clean,
    )
    bar = _bar(args, count)
    started = time.monotonic()
    try:
        result = publish_payments(
            _brokers(args),
            spec,
            topics=PaymentTopics(args.topic, args.customers_topic, args.merchants_topic),
            partitions=args.partitions,
            rate=args.rate,
            duration=args.duration,
            truth=args.truth,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"wrote {result.count:,} payments to {args.topic!r} ({result.rate:,.0f}/s), "
        f"{args.customers:,} customers to {args.customers_topic!r}, {args.merchants:,} "
        f"merchants to {args.merchants_topic!r}; {len(result.truth)} fraud instances"
        + (f" in {args.truth}" if args.truth else "")
        + f" ({time.monotonic() - started:.1f}s)"
    )
    return 0


def _orders(args: argparse.Namespace) -> int:
    from raystream.generate.orders import OrdersSpec
    from raystream.generate.publish import publish_orders

    count = _count(args, 1_000, 1_000_000_000)
    spec = OrdersSpec(
        count=count,
        customers=args.customers,
        seed=args.seed,
        payment_decline_rate=args.decline_rate,
        out_of_stock_rate=args.out_of_stock_rate,
        shipping_delay_rate=args.shipping_delay_rate,
        shipping_timeout_rate=args.shipping_timeout_rate,
        shipping_timeout_ms=args.shipping_timeout_ms,
    )
    bar = _bar(args, count)
    try:
        result = publish_orders(
            _brokers(args),
            spec,
            topic=args.topic,
            partitions=args.partitions,
            rate=args.rate,
            duration=args.duration,
            truth=args.truth,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    cancelled = sum(1 for t in result.truth if t["state"] != "Completed")
    print(
        f"wrote {result.count:,} orders to {args.topic!r} ({result.rate:,.0f}/s); "
        f"{cancelled:,} are fated to be cancelled"
        + (f"; truth in {args.truth}" if args.truth else "")
    )
    return 0
