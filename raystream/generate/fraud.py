"""Seeded payments with injected fraud patterns, and the ground truth of every injected instance.

The customers and merchants are those of :mod:`raystream.generate.payments` for the same seed
(``customer_profiles(spec.payments_spec())``): the fraud job joins ``typical_amount`` and
``home_country`` from them. :class:`FraudRules` holds the exact rule of every pattern; the job
and :func:`detect` (the reference detector) use the same thresholds.

The rules (per customer, event time ``ts``; default thresholds in brackets)
---------------------------------------------------------------------------
* ``velocity``: ``count() >= velocity_count`` [8] in a tumbling window of ``velocity_window_ms``
  [1 min]. The alert holds every payment of the customer in that window.
* ``amount_spike``: one payment with ``amount > spike_factor * typical_amount`` [10x].
* ``country_mismatch``: one payment with ``country != home_country`` *and*
  ``amount > mismatch_factor * typical_amount`` [3x]. Small payments abroad are normal travel.
* ``many_merchants``: ``count_distinct(merchant_id) >= merchants_count`` [6] in a tumbling window
  of ``merchants_window_ms`` [5 min]. The alert holds every payment of the customer in it.
* ``card_testing``: ``count() >= card_testing_count`` [5] payments with
  ``amount < tiny_amount`` [1.00] in a tumbling window of ``card_testing_window_ms`` [5 min]. The
  alert holds those tiny payments.

Windowing the fraud job must use, for exactly one alert per instance
--------------------------------------------------------------------
Tumbling windows keyed by ``customer_id``, aligned to multiples of their size from epoch 0 (what
``raystream``'s ``tumbling(size)`` does), emitting ``final`` (once, on close). Event times in the
stream never decrease, so no grace or out-of-orderness is needed. ``amount_spike`` and
``country_mismatch`` are per-payment filters (one payment, one alert).

What the generator guarantees
-----------------------------
* Time is cut into *blocks* of ``rules.block_ms`` (the least common multiple of the rule windows,
  5 min by default), aligned to epoch 0, so every rule window lies inside exactly one block.
* An instance lies inside one tumbling window of its rule, and it has its block to itself: the
  customer makes no other payment in that block. The window holding an instance therefore holds
  exactly the instance's payments of that customer, and it cannot straddle a window boundary.
* Two instances of one customer (of any patterns) are at least 3 blocks apart (block numbers
  differ by >= 3): at least two whole blocks, so >= 2 windows of every rule, lie between them.
* An instance trips its own rule only: bursts and merchant hops use ordinary amounts in the home
  country; card testing uses one merchant; ``card_testing_count`` and ``merchants_count`` are below
  ``velocity_count``; spike and mismatch are single payments, mismatch amounts stay below the
  spike threshold and spikes are paid at home.
* Normal traffic trips no rule under any window placement (tumbling, hopping or sliding): one
  customer's normal payments are at least ``min_gap_ms`` apart (at most 3 in any minute by
  default), go to that customer's ``favourite_merchants`` [3] only, and have amounts in
  ``[tiny_amount, normal_max_factor * typical_amount]`` [2.5x], at home or abroad.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from raystream.errors import ConfigError
from raystream.generate.payments import COUNTRIES, PaymentsSpec, customer_profiles

VELOCITY = "velocity"
AMOUNT_SPIKE = "amount_spike"
COUNTRY_MISMATCH = "country_mismatch"
MANY_MERCHANTS = "many_merchants"
CARD_TESTING = "card_testing"
#: Every pattern, in the order instances are planned.
PATTERNS: tuple[str, ...] = (VELOCITY, AMOUNT_SPIKE, COUNTRY_MISMATCH, MANY_MERCHANTS, CARD_TESTING)

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class FraudRules:
    """The exact rule of every pattern: thresholds and tumbling-window sizes (ms)."""

    velocity_count: int = 8
    velocity_window_ms: int = 60_000
    spike_factor: float = 10.0
    mismatch_factor: float = 3.0
    merchants_count: int = 6
    merchants_window_ms: int = 300_000
    tiny_amount: float = 1.00
    card_testing_count: int = 5
    card_testing_window_ms: int = 300_000

    def __post_init__(self) -> None:
        for name in ("velocity_count", "merchants_count", "card_testing_count"):
            if getattr(self, name) < 2:
                raise ConfigError(f"FraudRules.{name} must be at least 2 to describe a pattern")
        for name in ("velocity_window_ms", "merchants_window_ms", "card_testing_window_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FraudRules.{name} must be a positive number of ms")
        if self.tiny_amount < 0.02:
            raise ConfigError("FraudRules.tiny_amount must be at least 0.02, e.g. 1.00")
        if not 0 < self.mismatch_factor < self.spike_factor:
            raise ConfigError(
                "FraudRules.mismatch_factor must be positive and below spike_factor "
                f"(got {self.mismatch_factor} and {self.spike_factor})"
            )

    @property
    def block_ms(self) -> int:
        """Least common multiple of the rule windows: every window nests in one block."""
        return math.lcm(
            self.velocity_window_ms, self.merchants_window_ms, self.card_testing_window_ms
        )

    def window_ms(self, pattern: str) -> int | None:
        """The tumbling-window size of ``pattern``'s rule; ``None`` for per-payment rules."""
        return {
            VELOCITY: self.velocity_window_ms,
            MANY_MERCHANTS: self.merchants_window_ms,
            CARD_TESTING: self.card_testing_window_ms,
        }.get(pattern)

    def is_spike(self, amount: float, typical_amount: float) -> bool:
        """The ``amount_spike`` predicate on one payment."""
        return amount > self.spike_factor * typical_amount

    def is_mismatch(
        self, amount: float, country: str, home_country: str, typical_amount: float
    ) -> bool:
        """The ``country_mismatch`` predicate on one payment."""
        return country != home_country and amount > self.mismatch_factor * typical_amount

    def is_tiny(self, amount: float) -> bool:
        """Whether a payment counts towards ``card_testing``."""
        return amount < self.tiny_amount


@dataclass(frozen=True)
class FraudSpec:
    """What traffic to generate and which fraud to inject.

    ``count`` is the total number of payments, injected ones included. Each customer's normal
    payments are ``min_gap_ms`` plus an exponential extra apart, ``mean_gap_ms`` on average, so
    the stream spans about ``count * mean_gap_ms / customers`` ms of event time.
    ``instances_per_pattern`` defaults to ``max(1, count // 1000)``; ``clean=True`` injects none.
    """

    count: int = 10_000
    customers: int = 1_000
    merchants: int = 100
    seed: int = 7
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    mean_gap_ms: int = 60_000
    min_gap_ms: int = 20_000
    instances_per_pattern: int | None = None
    patterns: tuple[str, ...] = PATTERNS
    clean: bool = False
    rules: FraudRules = field(default_factory=FraudRules)
    favourite_merchants: int = 3
    abroad_rate: float = 0.05
    normal_max_factor: float = 2.5

    def __post_init__(self) -> None:
        r = self.rules
        if self.count < 0 or self.customers < 1 or self.merchants < 1:
            raise ConfigError("FraudSpec: count must be >= 0, customers and merchants >= 1")
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if unknown:
            raise ConfigError(f"FraudSpec.patterns: unknown {unknown}; choose from {PATTERNS}")
        if self.instances_per_pattern is not None and self.instances_per_pattern < 0:
            raise ConfigError("FraudSpec.instances_per_pattern must be >= 0 (or None for auto)")
        if not 0 < self.min_gap_ms <= self.mean_gap_ms:
            raise ConfigError("FraudSpec: need 0 < min_gap_ms <= mean_gap_ms")
        if math.ceil(r.velocity_window_ms / self.min_gap_ms) >= r.velocity_count:
            raise ConfigError(
                "FraudSpec.min_gap_ms is too small: normal traffic could reach "
                f"velocity_count={r.velocity_count} within {r.velocity_window_ms} ms; raise it"
            )
        if not 1 <= self.favourite_merchants < r.merchants_count:
            raise ConfigError(
                f"FraudSpec.favourite_merchants must be in [1, {r.merchants_count - 1}] so "
                "normal traffic never reaches merchants_count"
            )
        if self.merchants < max(self.favourite_merchants, r.merchants_count):
            raise ConfigError(
                f"FraudSpec.merchants must be >= {max(self.favourite_merchants, r.merchants_count)}"
                " (favourite merchants and the many_merchants pattern need that many)"
            )
        if max(r.card_testing_count, r.merchants_count) >= r.velocity_count:
            raise ConfigError(
                "FraudRules: card_testing_count and merchants_count must be below velocity_count,"
                " or their instances would also trip the velocity rule"
            )
        if not 0 < self.normal_max_factor < r.mismatch_factor:
            raise ConfigError("FraudSpec.normal_max_factor must be in (0, rules.mismatch_factor)")
        if not r.mismatch_factor * 1.1 < r.spike_factor * 0.9:
            raise ConfigError(
                "FraudRules: spike_factor must exceed mismatch_factor by a margin "
                "(mismatch_factor * 1.1 < spike_factor * 0.9) so mismatch payments are no spikes"
            )
        if not 0 <= self.abroad_rate <= 1:
            raise ConfigError("FraudSpec.abroad_rate must be in [0, 1]")
        if self.injected_count() > self.count:
            raise ConfigError(
                f"FraudSpec.count={self.count} is smaller than the {self.injected_count()} "
                "payments the fraud instances need; raise count or lower instances_per_pattern"
            )

    def payments_spec(self) -> PaymentsSpec:
        """The :class:`PaymentsSpec` with the same customers and merchants (for the tables)."""
        return PaymentsSpec(
            count=self.count,
            customers=self.customers,
            merchants=self.merchants,
            seed=self.seed,
            start_ms=self.start_ms,
        )

    def instances(self) -> int:
        """How many instances of each pattern in ``patterns`` are injected."""
        if self.clean:
            return 0
        if self.instances_per_pattern is not None:
            return self.instances_per_pattern
        return max(1, self.count // 1_000)

    def injected_count(self) -> int:
        """How many of the ``count`` payments belong to fraud instances."""
        r = self.rules
        size = {
            VELOCITY: r.velocity_count,
            AMOUNT_SPIKE: 1,
            COUNTRY_MISMATCH: 1,
            MANY_MERCHANTS: r.merchants_count,
            CARD_TESTING: r.card_testing_count,
        }
        return self.instances() * sum(size[p] for p in self.patterns)


@dataclass(frozen=True)
class FraudInstance:
    """One injected instance (ground truth), or one alert of :func:`detect` (same shape).

    ``payment_ids`` are in stream order. ``window_start``/``window_end`` (``[start, end)``, ms)
    are the tumbling window of a windowed rule, ``None`` for per-payment rules.
    """

    pattern: str
    customer_id: str
    first_ts: int
    last_ts: int
    payment_ids: tuple[str, ...]
    window_start: int | None = None
    window_end: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["payment_ids"] = list(self.payment_ids)
        return d


def fraud_payments(spec: FraudSpec) -> tuple[Iterator[dict[str, Any]], list[FraudInstance]]:
    """The payments (a lazy iterator in event-time order) and the ground truth, known up front.

    Payment ids are ``"p"`` + 16 hex digits, unique, and say nothing about fraud.
    """
    profiles = customer_profiles(spec.payments_spec())
    _check_profiles(spec, profiles)
    salt = random.Random(spec.seed * 31 + 5).getrandbits(64)
    injected, truth, reserved = _plan(spec, profiles, salt)
    normal = _normal_payments(spec, profiles, reserved, spec.count - len(injected), salt)
    stream = heapq.merge(normal, injected, key=lambda p: p["ts"])
    return stream, truth


def ground_truth(spec: FraudSpec) -> list[FraudInstance]:
    """The injected instances of ``spec``, without generating the normal traffic."""
    profiles = customer_profiles(spec.payments_spec())
    _check_profiles(spec, profiles)
    salt = random.Random(spec.seed * 31 + 5).getrandbits(64)
    return _plan(spec, profiles, salt)[1]


def detect(
    payments: Iterable[Mapping[str, Any]],
    customers: Iterable[Mapping[str, Any]],
    rules: FraudRules | None = None,
) -> list[FraudInstance]:
    """Reference detector: apply ``rules`` with tumbling windows; one alert per firing window.

    ``customers`` are profiles with ``customer_id``, ``home_country`` and ``typical_amount``.
    Alerts are sorted by ``(first_ts, pattern, customer_id)``, as :func:`fraud_payments`'s truth.
    """
    r = rules or FraudRules()
    profile = {c["customer_id"]: c for c in customers}
    alerts: list[FraudInstance] = []
    windows: dict[tuple[str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for p in payments:
        cust = profile[p["customer_id"]]
        amount, ts = p["amount"], p["ts"]
        if r.is_spike(amount, cust["typical_amount"]):
            alerts.append(_single(AMOUNT_SPIKE, p))
        if r.is_mismatch(amount, p["country"], cust["home_country"], cust["typical_amount"]):
            alerts.append(_single(COUNTRY_MISMATCH, p))
        for pattern in (VELOCITY, MANY_MERCHANTS, CARD_TESTING):
            if pattern == CARD_TESTING and not r.is_tiny(amount):
                continue
            size = r.window_ms(pattern)
            assert size is not None
            windows[(pattern, p["customer_id"], ts - ts % size)].append(p)
    for (pattern, customer_id, start), rows in windows.items():
        n = len({p["merchant_id"] for p in rows}) if pattern == MANY_MERCHANTS else len(rows)
        need = {
            VELOCITY: r.velocity_count,
            MANY_MERCHANTS: r.merchants_count,
            CARD_TESTING: r.card_testing_count,
        }[pattern]
        if n >= need:
            size = r.window_ms(pattern)
            assert size is not None
            alerts.append(_instance(pattern, customer_id, rows, start, start + size))
    alerts.sort(key=_order)
    return alerts


def _single(pattern: str, p: Mapping[str, Any]) -> FraudInstance:
    return FraudInstance(pattern, p["customer_id"], p["ts"], p["ts"], (p["payment_id"],))


def _instance(
    pattern: str, customer_id: str, rows: list[Mapping[str, Any]], start: int, end: int
) -> FraudInstance:
    return FraudInstance(
        pattern,
        customer_id,
        rows[0]["ts"],
        rows[-1]["ts"],
        tuple(p["payment_id"] for p in rows),
        start,
        end,
    )


def _order(i: FraudInstance) -> tuple[int, str, str]:
    return (i.first_ts, i.pattern, i.customer_id)


def _payment_id(n: int, salt: int) -> str:
    """A unique id for sequence number ``n``: splitmix64's finaliser is a bijection on 64 bits."""
    x = (n ^ salt) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return f"p{x ^ (x >> 31):016x}"


def _favourites(spec: FraudSpec) -> list[list[str]]:
    rng = random.Random(spec.seed * 6151 + 3)
    return [
        [f"m{m:05d}" for m in rng.sample(range(spec.merchants), spec.favourite_merchants)]
        for _ in range(spec.customers)
    ]


def _check_profiles(spec: FraudSpec, profiles: list[dict[str, Any]]) -> None:
    low = min(p["typical_amount"] for p in profiles)
    if low * spec.normal_max_factor < spec.rules.tiny_amount:
        raise ConfigError(
            f"seed {spec.seed} gives a customer with typical_amount {low}, too small for "
            "normal amounts >= rules.tiny_amount; pick another seed or lower tiny_amount"
        )


def _normal_amount(rng: random.Random, typical: float, spec: FraudSpec) -> float:
    factor = min(max(rng.lognormvariate(0.0, 0.35), 0.3), spec.normal_max_factor)
    return max(round(typical * factor, 2), spec.rules.tiny_amount)


def _abroad(rng: random.Random, home: str) -> str:
    return rng.choice([c for c in COUNTRIES if c != home])


def _normal_payments(
    spec: FraudSpec,
    profiles: list[dict[str, Any]],
    reserved: dict[int, set[int]],
    n: int,
    salt: int,
) -> Iterator[dict[str, Any]]:
    """``n`` normal payments: per customer, gaps of ``min_gap_ms`` + an exponential extra."""
    rng = random.Random(spec.seed * 7 + 11)
    favourites = _favourites(spec)
    block = spec.rules.block_ms
    extra = spec.mean_gap_ms - spec.min_gap_ms

    def skip_reserved(c: int, ts: int) -> int:
        # Blocks of one customer's instances are >= 3 apart, so one shift lands in a free block.
        if ts // block in reserved.get(c, ()):
            ts += block
        return ts

    heap = [
        (skip_reserved(c, spec.start_ms + rng.randrange(spec.mean_gap_ms)), c)
        for c in range(spec.customers)
    ]
    heapq.heapify(heap)
    for k in range(n):
        ts, c = heap[0]
        cust = profiles[c]
        home = cust["home_country"]
        yield {
            "payment_id": _payment_id(2 * k, salt),
            "customer_id": cust["customer_id"],
            "merchant_id": rng.choice(favourites[c]),
            "amount": _normal_amount(rng, cust["typical_amount"], spec),
            "currency": "EUR",
            "country": _abroad(rng, home) if rng.random() < spec.abroad_rate else home,
            "ts": ts,
        }
        gap = spec.min_gap_ms + (int(rng.expovariate(1.0 / extra)) if extra else 0)
        heapq.heapreplace(heap, (skip_reserved(c, ts + gap), c))


def _plan(
    spec: FraudSpec, profiles: list[dict[str, Any]], salt: int
) -> tuple[list[dict[str, Any]], list[FraudInstance], dict[int, set[int]]]:
    """Injected payments (by time), the ground truth, and each customer's reserved blocks."""
    per_pattern = spec.instances()
    todo = [p for _ in range(per_pattern) for p in spec.patterns]
    if not todo:
        return [], [], {}
    rng = random.Random(spec.seed * 4099 + 17)
    rng.shuffle(todo)
    block = spec.rules.block_ms
    first_block = -(-spec.start_ms // block)
    normal = spec.count - spec.injected_count()
    span = max(spec.mean_gap_ms, normal * spec.mean_gap_ms // spec.customers)
    # Normal traffic spans ~span ms; when the instances need more room, they run past its end.
    per_customer = -(-len(todo) // spec.customers)
    blocks = max(1, span // block, 6 * per_customer)

    reserved: dict[int, set[int]] = defaultdict(set)
    slots: list[tuple[str, int, int]] = []
    attempts = 0
    for pattern in todo:
        while True:
            attempts += 1
            if attempts > 100 * len(todo) + 10_000:
                raise ConfigError(
                    f"cannot place {len(todo)} fraud instances 3 blocks apart per customer in "
                    f"{blocks} blocks of {block} ms; lower instances_per_pattern or raise "
                    "count or customers"
                )
            c = rng.randrange(spec.customers)
            b = first_block + rng.randrange(blocks)
            if all(abs(b - other) >= 3 for other in reserved[c]):
                reserved[c].add(b)
                slots.append((pattern, c, b * block))
                break

    favourites = _favourites(spec)
    built = [
        _build(rng, spec, pattern, profiles[c], favourites[c], start) for pattern, c, start in slots
    ]
    # A stable sort: an instance's rows (already in time order) keep their order.
    injected = sorted((p for _, rows in built for p in rows), key=lambda p: p["ts"])
    for j, p in enumerate(injected):
        p["payment_id"] = _payment_id(2 * j + 1, salt)
    truth = []
    for inst, rows in built:
        ids = tuple(p["payment_id"] for p in rows)
        truth.append(
            FraudInstance(
                inst.pattern,
                inst.customer_id,
                rows[0]["ts"],
                rows[-1]["ts"],
                ids,
                inst.window_start,
                inst.window_end,
            )
        )
    truth.sort(key=_order)
    return injected, truth, dict(reserved)


def _build(
    rng: random.Random,
    spec: FraudSpec,
    pattern: str,
    cust: dict[str, Any],
    favourites: list[str],
    block_start: int,
) -> tuple[FraudInstance, list[dict[str, Any]]]:
    """One instance in the block at ``block_start``: its payments (ids filled in later)."""
    r = spec.rules
    typical, home = cust["typical_amount"], cust["home_country"]
    size = r.window_ms(pattern) or r.block_ms
    start = block_start + size * rng.randrange(r.block_ms // size)
    windowed = r.window_ms(pattern) is not None
    merchant = rng.choice(favourites)
    rows: list[dict[str, Any]] = []

    def add(merchant_id: str, amount: float, country: str = home) -> None:
        rows.append(
            {
                "payment_id": "",
                "customer_id": cust["customer_id"],
                "merchant_id": merchant_id,
                "amount": amount,
                "currency": "EUR",
                "country": country,
                "ts": start + rng.randrange(size),
            }
        )

    if pattern == VELOCITY:
        for _ in range(r.velocity_count):
            add(merchant, _normal_amount(rng, typical, spec))
    elif pattern == AMOUNT_SPIKE:
        factor = rng.uniform(r.spike_factor * 1.1, r.spike_factor * 3)
        add(merchant, round(typical * factor, 2))
    elif pattern == COUNTRY_MISMATCH:
        factor = rng.uniform(r.mismatch_factor * 1.1, r.spike_factor * 0.9)
        add(merchant, round(typical * factor, 2), _abroad(rng, home))
    elif pattern == MANY_MERCHANTS:
        for m in rng.sample(range(spec.merchants), r.merchants_count):
            add(f"m{m:05d}", _normal_amount(rng, typical, spec))
    else:  # CARD_TESTING
        merchant = f"m{rng.randrange(spec.merchants):05d}"
        top = round(r.tiny_amount - 0.01, 2)
        for _ in range(r.card_testing_count):
            add(merchant, round(rng.uniform(0.01, top), 2))
    rows.sort(key=lambda p: p["ts"])
    inst = FraudInstance(
        pattern,
        cust["customer_id"],
        rows[0]["ts"],
        rows[-1]["ts"],
        (),
        start if windowed else None,
        start + size if windowed else None,
    )
    return inst, rows
