"""Seeded payment traffic: customers with a home country and a typical amount, and merchants.

Deterministic for a seed, so tests and benchmarks can compute the expected result themselves.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "PL", "BR", "IN", "JP")
SEGMENTS = ("retail", "premium", "business", "student")
CATEGORIES = ("grocery", "travel", "electronics", "fuel", "restaurant", "fashion", "gaming")


@dataclass(frozen=True)
class PaymentsSpec:
    """What traffic to generate."""

    count: int = 10_000
    customers: int = 1_000
    merchants: int = 100
    seed: int = 7
    #: Event time of the first payment (ms since epoch) and the mean gap between payments.
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    step_ms: int = 1


def customer_profiles(spec: PaymentsSpec) -> list[dict[str, Any]]:
    """One profile per customer: segment, home country and typical amount."""
    rng = random.Random(spec.seed * 7919 + 1)
    return [
        {
            "customer_id": f"c{i:06d}",
            "segment": rng.choice(SEGMENTS),
            "home_country": rng.choice(COUNTRIES),
            "typical_amount": round(rng.lognormvariate(3.5, 0.6), 2),
        }
        for i in range(spec.customers)
    ]


def merchants(spec: PaymentsSpec) -> list[dict[str, Any]]:
    """One row per merchant: category and country."""
    rng = random.Random(spec.seed * 104729 + 2)
    return [
        {
            "merchant_id": f"m{i:05d}",
            "category": rng.choice(CATEGORIES),
            "country": rng.choice(COUNTRIES),
        }
        for i in range(spec.merchants)
    ]


def payments(spec: PaymentsSpec) -> Iterator[dict[str, Any]]:
    """``spec.count`` payments in event-time order; amounts follow each customer's habits."""
    rng = random.Random(spec.seed)
    profiles = customer_profiles(spec)
    ts = spec.start_ms
    for i in range(spec.count):
        cust = profiles[rng.randrange(spec.customers)]
        abroad = rng.random() < 0.05
        yield {
            "payment_id": f"p{i:09d}",
            "customer_id": cust["customer_id"],
            "merchant_id": f"m{rng.randrange(spec.merchants):05d}",
            "amount": round(cust["typical_amount"] * rng.lognormvariate(0, 0.8), 2),
            "currency": "EUR",
            "country": rng.choice(COUNTRIES) if abroad else cust["home_country"],
            "ts": ts,
        }
        ts += spec.step_ms


def encoded(spec: PaymentsSpec) -> Iterator[tuple[bytes, bytes]]:
    """Payments as Kafka (key, value) pairs keyed by customer id."""
    return encode_records(payments(spec), "customer_id")


def encode_records(
    records: Iterable[Mapping[str, Any]], key_field: str
) -> Iterator[tuple[bytes, bytes]]:
    """Any generated records as Kafka ``(key, value)`` pairs: ``str(record[key_field])`` as the
    key, compact JSON as the value (what :func:`raystream.generate.produce.produce_records` takes).
    """
    for r in records:
        yield str(r[key_field]).encode(), json.dumps(r, separators=(",", ":")).encode()
