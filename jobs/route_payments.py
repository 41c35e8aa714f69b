"""A stateless routing job: large or cross-border payments go to review, the rest are approved.

python jobs/route_payments.py --workers 2 --bounded
ray job submit --working-dir . -- python jobs/route_payments.py --bounded
"""

from __future__ import annotations

import argparse
from typing import Any

import raystream as rs

REVIEW_AMOUNT = 500.0


def needs_review(p: dict[str, Any]) -> bool:
    """Payments a human should look at."""
    return bool(p["amount"] >= REVIEW_AMOUNT)


def build(app: rs.App, source: str = "payments") -> None:
    """Route ``source`` into ``<source>.review`` and ``<source>.approved``."""
    review, approved = app.stream(source, key="customer_id", time="ts").branch(needs_review)
    review.map(lambda p: {**p, "reason": "amount"}).to(f"{source}.review")
    approved.to(f"{source}.approved")


def main(argv: list[str] | None = None) -> rs.RunResult:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", default="route-payments")
    parser.add_argument("--source", default="payments")
    parser.add_argument("--brokers", default=None, help="default: RAYSTREAM_BROKERS or dev stack")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    app = rs.App(args.app, brokers=args.brokers)
    build(app, args.source)
    result = app.run(workers=args.workers, bounded=args.bounded, timeout=args.timeout)
    print(
        f"{args.app}: {result.state}; in={result.records_in} out={result.records_out} "
        f"dead_letters={result.dead_letters} in {result.seconds:.1f}s"
    )
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main().state in ("finished", "stopped") else 1)
