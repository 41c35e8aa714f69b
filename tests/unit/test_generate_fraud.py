"""The fraud generator: deterministic, and its ground truth is exactly what the rules detect."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

import raystream.generate as gen
from raystream.errors import ConfigError
from raystream.generate.fraud import (
    AMOUNT_SPIKE,
    CARD_TESTING,
    COUNTRY_MISMATCH,
    MANY_MERCHANTS,
    PATTERNS,
    VELOCITY,
    FraudRules,
    FraudSpec,
    detect,
    fraud_payments,
    ground_truth,
)
from raystream.generate.payments import customer_profiles, merchants

SEEDS = (1, 2, 42)


def generate(spec: FraudSpec) -> tuple[list[dict[str, Any]], list[gen.FraudInstance]]:
    stream, truth = fraud_payments(spec)
    return list(stream), truth


@pytest.fixture(scope="module")
def streams() -> dict[int, tuple[FraudSpec, list[dict[str, Any]], list[gen.FraudInstance]]]:
    out = {}
    for seed in SEEDS:
        spec = FraudSpec(count=15_000, customers=400, seed=seed)
        out[seed] = (spec, *generate(spec))
    return out


def test_same_seed_same_stream_and_truth() -> None:
    spec = FraudSpec(count=3_000, seed=5)
    assert generate(spec) == generate(spec)
    assert ground_truth(spec) == generate(spec)[1]
    assert generate(FraudSpec(count=3_000, seed=6))[0] != generate(spec)[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_detector_finds_exactly_the_ground_truth(seed: int, streams: Any) -> None:
    spec, stream, truth = streams[seed]
    alerts = detect(stream, customer_profiles(spec.payments_spec()), spec.rules)
    assert alerts == truth  # precision = recall = 1.0, payment ids and windows included
    assert Counter(i.pattern for i in truth) == {p: spec.instances() for p in PATTERNS}


@pytest.mark.parametrize("seed", SEEDS)
def test_clean_stream_triggers_no_rule(seed: int) -> None:
    spec = FraudSpec(count=10_000, customers=300, seed=seed, clean=True)
    stream, truth = generate(spec)
    assert truth == []
    assert len(stream) == 10_000
    assert detect(stream, customer_profiles(spec.payments_spec())) == []


def test_clean_stream_trips_nothing_in_sliding_windows_either() -> None:
    spec = FraudSpec(count=20_000, customers=300, seed=9, clean=True)
    rules = spec.rules
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in generate(spec)[0]:
        by_customer[p["customer_id"]].append(p)
    for rows in by_customer.values():
        ts = [p["ts"] for p in rows]
        lo = 0
        for hi in range(len(ts)):
            while ts[hi] - ts[lo] >= rules.velocity_window_ms:
                lo += 1
            assert hi - lo + 1 <= 3  # any 60 s holds at most 3 normal payments
        assert len({p["merchant_id"] for p in rows}) < rules.merchants_count
        assert min(p["amount"] for p in rows) >= rules.tiny_amount


def test_stream_shape(streams: Any) -> None:
    spec, stream, _ = streams[1]
    assert len(stream) == spec.count
    assert len({p["payment_id"] for p in stream}) == spec.count
    ts = [p["ts"] for p in stream]
    assert ts == sorted(ts) and ts[0] >= spec.start_ms
    known_customers = {c["customer_id"] for c in customer_profiles(spec.payments_spec())}
    known_merchants = {m["merchant_id"] for m in merchants(spec.payments_spec())}
    for p in stream[:2_000]:
        assert set(p) == {
            "payment_id",
            "customer_id",
            "merchant_id",
            "amount",
            "currency",
            "country",
            "ts",
        }
        assert p["customer_id"] in known_customers and p["merchant_id"] in known_merchants
        assert p["amount"] == round(p["amount"], 2) and p["amount"] > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_instances_sit_inside_one_window_and_own_their_block(seed: int, streams: Any) -> None:
    spec, stream, truth = streams[seed]
    rules = spec.rules
    block = rules.block_ms
    by_id = {p["payment_id"]: p for p in stream}
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in stream:
        by_customer[p["customer_id"]].append(p)
    for inst in truth:
        rows = [by_id[i] for i in inst.payment_ids]
        assert all(p["customer_id"] == inst.customer_id for p in rows)
        assert (inst.first_ts, inst.last_ts) == (rows[0]["ts"], rows[-1]["ts"])
        size = rules.window_ms(inst.pattern)
        if size is None:
            assert inst.window_start is None and len(rows) == 1
        else:
            assert inst.window_start is not None and inst.window_start % size == 0
            assert inst.window_end == inst.window_start + size
            assert inst.window_start <= inst.first_ts <= inst.last_ts < inst.window_end
        # The customer has no other payment in the instance's block.
        b = inst.first_ts // block
        assert inst.last_ts // block == b
        in_block = {p["payment_id"] for p in by_customer[inst.customer_id] if p["ts"] // block == b}
        assert in_block == set(inst.payment_ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_instances_of_one_customer_are_two_blocks_apart(seed: int, streams: Any) -> None:
    spec, _, truth = streams[seed]
    blocks: dict[str, list[int]] = defaultdict(list)
    for inst in truth:
        blocks[inst.customer_id].append(inst.first_ts // spec.rules.block_ms)
    for bs in blocks.values():
        bs.sort()
        assert all(b - a >= 3 for a, b in itertools.pairwise(bs))


def test_patterns_have_their_documented_shape(streams: Any) -> None:
    spec, stream, truth = streams[2]
    rules = spec.rules
    profile = {c["customer_id"]: c for c in customer_profiles(spec.payments_spec())}
    by_id = {p["payment_id"]: p for p in stream}
    for inst in truth:
        rows = [by_id[i] for i in inst.payment_ids]
        cust = profile[inst.customer_id]
        typical, home = cust["typical_amount"], cust["home_country"]
        if inst.pattern == VELOCITY:
            assert len(rows) == rules.velocity_count
        elif inst.pattern == AMOUNT_SPIKE:
            assert rows[0]["amount"] > rules.spike_factor * typical
            assert rows[0]["country"] == home
        elif inst.pattern == COUNTRY_MISMATCH:
            assert rows[0]["country"] != home
            assert rules.mismatch_factor * typical < rows[0]["amount"]
            assert rows[0]["amount"] <= rules.spike_factor * typical
        elif inst.pattern == MANY_MERCHANTS:
            assert len({p["merchant_id"] for p in rows}) == rules.merchants_count
        else:
            assert inst.pattern == CARD_TESTING
            assert len(rows) == rules.card_testing_count
            assert all(p["amount"] < rules.tiny_amount for p in rows)


def test_normal_traffic_travels_a_little() -> None:
    spec = FraudSpec(count=20_000, customers=500, seed=4, clean=True)
    home = {c["customer_id"]: c["home_country"] for c in customer_profiles(spec.payments_spec())}
    stream = generate(spec)[0]
    abroad = sum(p["country"] != home[p["customer_id"]] for p in stream) / len(stream)
    assert 0.03 < abroad < 0.07  # abroad_rate = 0.05


def test_patterns_and_instance_count_are_selectable() -> None:
    spec = FraudSpec(count=5_000, seed=3, patterns=(CARD_TESTING,), instances_per_pattern=7)
    stream, truth = generate(spec)
    assert [i.pattern for i in truth] == [CARD_TESTING] * 7
    assert detect(stream, customer_profiles(spec.payments_spec())) == truth


@pytest.mark.parametrize(
    "rules",
    [
        FraudRules(
            velocity_count=5, velocity_window_ms=30_000, merchants_count=4, card_testing_count=3
        ),
        FraudRules(card_testing_window_ms=120_000),  # blocks become lcm(1m, 5m, 2m) = 10 min
    ],
)
def test_other_rules_are_honoured(rules: FraudRules) -> None:
    spec = FraudSpec(count=8_000, customers=300, seed=8, rules=rules, min_gap_ms=10_000)
    stream, truth = generate(spec)
    assert len(truth) == 5 * spec.instances()
    assert detect(stream, customer_profiles(spec.payments_spec()), rules) == truth


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_gap_ms": 5_000},  # normal traffic could reach 8 payments a minute
        {"favourite_merchants": 6},
        {"normal_max_factor": 3.5},
        {"count": 15},  # too small for one instance of each pattern (21 payments)
        {"patterns": ("phishing",)},
        {"rules": FraudRules(card_testing_count=9)},
    ],
)
def test_impossible_specs_fail_with_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FraudSpec(**kwargs)


def test_rules_validate() -> None:
    with pytest.raises(ConfigError, match="mismatch_factor"):
        FraudRules(mismatch_factor=12.0)
    with pytest.raises(ConfigError, match="velocity_window_ms"):
        FraudRules(velocity_window_ms=0)
    assert FraudRules().block_ms == 300_000


def test_hundred_thousand_payments_are_fast() -> None:
    began = time.perf_counter()
    stream, truth = fraud_payments(FraudSpec(count=100_000, seed=11))
    n = sum(1 for _ in stream)
    assert n == 100_000 and len(truth) == 500
    assert time.perf_counter() - began < 3.0


def test_package_exports() -> None:
    assert gen.fraud_payments is fraud_payments and gen.detect is detect
    for name in gen.__all__:
        assert hasattr(gen, name)
    ground = [i.to_dict() for i in gen.ground_truth(FraudSpec(count=2_000, seed=1))]
    assert ground and isinstance(ground[0]["payment_ids"], list)
    pairs = list(
        gen.encode_records(generate(FraudSpec(count=10, seed=1, clean=True))[0], "customer_id")
    )
    assert len(pairs) == 10 and pairs[0][0].startswith(b"c")
