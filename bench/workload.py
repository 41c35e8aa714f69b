"""The benchmark input, put on a broker before timing starts, and its expected results.

Input (from :mod:`raystream.generate.payments`, seeded, so the expectation is computed from the
same generator):

* ``payments``: ``records`` JSON payments keyed by ``customer_id``, event time ``ts`` 1 ms apart,
  ``partitions`` partitions (murmur2, so a customer's payments are in one partition, in order).
* ``customers``: one JSON profile per customer keyed by ``customer_id``, compacted.

Expected results:

* **W1**: per customer and tumbling 10 s event-time window aligned to the epoch
  (``window_start = ts - ts % 10000``): ``n`` = count and ``total`` = sum of ``amount``.
* **W2**: every payment with its customer's ``segment``, ``home_country`` and ``typical_amount``
  (the profiles are static here).

Both are held compactly (flat arrays, a 64-bit digest per enriched payment) so verifying a
million records costs a few MiB.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from raystream._kafka.admin import Topics, end_offsets
from raystream.config import KafkaConfig
from raystream.generate.payments import PaymentsSpec, customer_profiles, payments
from raystream.generate.produce import produce_records

WINDOW_MS = 10_000
PAYMENT_FIELDS = ("payment_id", "customer_id", "merchant_id", "amount", "currency", "country", "ts")
PROFILE_FIELDS = ("segment", "home_country", "typical_amount")
#: The fields of a W2 output record that are verified (extra fields are ignored).
W2_FIELDS = PAYMENT_FIELDS + PROFILE_FIELDS


@dataclass(frozen=True)
class WorkloadSpec:
    """Size and shape of the benchmark input."""

    records: int = 1_000_000
    customers: int = 10_000
    merchants: int = 500
    partitions: int = 8
    seed: int = 7
    payments_topic: str = "payments"
    customers_topic: str = "customers"

    def payments_spec(self) -> PaymentsSpec:
        """The generator settings: payments 1 ms apart in event time."""
        return PaymentsSpec(
            count=self.records,
            customers=self.customers,
            merchants=self.merchants,
            seed=self.seed,
            step_ms=1,
        )


@dataclass(frozen=True)
class Workload:
    """A prepared input, as benchmarks see it (small and picklable)."""

    spec: WorkloadSpec
    #: End offset (high watermark) of every partition, known before any benchmark runs.
    payments_end: dict[int, int]
    customers_end: dict[int, int]

    @property
    def partitions(self) -> int:
        """Partitions of the input topics (and of the output topics the runner creates)."""
        return self.spec.partitions


def w2_digest(record: Mapping[str, Any]) -> int:
    """A digest of a W2 record's verified fields (Python's ``hash``: valid in one process only)."""
    return hash(tuple(record.get(f) for f in W2_FIELDS))


@dataclass
class Expected:
    """The expected W1 and W2 results, held in flat arrays indexed by customer/window/payment."""

    spec: WorkloadSpec
    window_base: int
    windows: int
    customer_index: dict[str, int]
    #: Per ``customer * windows + window``: count and sum of amounts.
    w1_count: array[int] = field(repr=False)
    w1_sum: array[float] = field(repr=False)
    #: Per payment number (``payment_id = "p%09d"``): :func:`w2_digest` of its enriched record.
    w2_digest: array[int] = field(repr=False)

    @property
    def w1_results(self) -> int:
        """How many (customer, window) results W1 must emit."""
        return sum(1 for n in self.w1_count if n)

    def w1_slot(self, customer_id: str, window_start: int) -> int | None:
        """Index of (customer, window) in the W1 arrays; None when outside the input."""
        c = self.customer_index.get(customer_id)
        if c is None or not isinstance(window_start, int):
            return None
        w, rem = divmod(window_start - self.window_base, WINDOW_MS)
        if rem or not 0 <= w < self.windows:
            return None
        return c * self.windows + w


def _expected_shell(spec: WorkloadSpec) -> Expected:
    ps = spec.payments_spec()
    first = ps.start_ms
    last = ps.start_ms + (spec.records - 1) * ps.step_ms
    base = first - first % WINDOW_MS
    windows = (last - last % WINDOW_MS - base) // WINDOW_MS + 1
    profiles = customer_profiles(ps)
    return Expected(
        spec=spec,
        window_base=base,
        windows=windows,
        customer_index={p["customer_id"]: i for i, p in enumerate(profiles)},
        w1_count=array("l", bytes(8 * spec.customers * windows)),
        w1_sum=array("d", bytes(8 * spec.customers * windows)),
        w2_digest=array("q", bytes(8 * spec.records)),
    )


def _payments_and_expectation(spec: WorkloadSpec, exp: Expected) -> Iterator[tuple[bytes, bytes]]:
    """Yield the encoded payments and fill ``exp`` on the way (one generator pass)."""
    ps = spec.payments_spec()
    extra = {p["customer_id"]: {f: p[f] for f in PROFILE_FIELDS} for p in customer_profiles(ps)}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for i, p in enumerate(payments(ps)):
        cid = p["customer_id"]
        ts = p["ts"]
        slot = exp.w1_slot(cid, ts - ts % WINDOW_MS)
        assert slot is not None
        exp.w1_count[slot] += 1
        exp.w1_sum[slot] += p["amount"]
        exp.w2_digest[i] = w2_digest(p | extra[cid])
        yield cid.encode(), dumps(p).encode()


def prepare(bootstrap: str, spec: WorkloadSpec) -> tuple[Workload, Expected, dict[str, float]]:
    """Create and fill the input topics on ``bootstrap``; return the workload and expectation.

    The topics must not exist yet (a fresh embedded broker). The third value holds preparation
    timings (seconds) for the results file.
    """
    cfg = KafkaConfig(brokers=bootstrap)
    topics = Topics(cfg)
    if spec.payments_topic in topics.partitions() or spec.customers_topic in topics.partitions():
        raise RuntimeError(f"input topics already exist on {bootstrap}: use a fresh broker")
    topics.ensure({spec.payments_topic: spec.partitions})
    topics.ensure({spec.customers_topic: spec.partitions}, {"cleanup.policy": "compact"})

    t0 = time.perf_counter()
    profiles = customer_profiles(spec.payments_spec())
    produce_records(
        bootstrap,
        spec.customers_topic,
        (
            (p["customer_id"].encode(), json.dumps(p, separators=(",", ":")).encode())
            for p in profiles
        ),
    )
    exp = _expected_shell(spec)
    produced = produce_records(bootstrap, spec.payments_topic, _payments_and_expectation(spec, exp))
    t1 = time.perf_counter()

    def ends(topic: str) -> dict[int, int]:
        got = end_offsets(cfg, [(topic, p) for p in range(spec.partitions)])
        return {p: off for (_, p), off in got.items()}

    payments_end, customers_end = ends(spec.payments_topic), ends(spec.customers_topic)
    if produced != spec.records or sum(payments_end.values()) != spec.records:
        raise RuntimeError(
            f"payments topic holds {sum(payments_end.values())} records, expected {spec.records}"
        )
    if sum(customers_end.values()) != spec.customers:
        raise RuntimeError(f"customers topic holds {sum(customers_end.values())} records")
    workload = Workload(spec, payments_end, customers_end)
    return workload, exp, {"produce_and_expect_s": t1 - t0, "prepare_s": time.perf_counter() - t0}
