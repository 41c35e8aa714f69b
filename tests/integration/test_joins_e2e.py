"""Enrichment end to end: 100,000 payments joined with 10,000 customer profiles (a table, updated
while the app runs) and 500 merchants (a global table), on the embedded broker and local Ray."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

import raystream as rs
from raystream.dev.broker import EmbeddedBroker
from raystream.generate.payments import PaymentsSpec, customer_profiles, merchants, payments

from .kafka_helpers import create_topic, produce, produce_json, read_all

PARTITIONS = 8
SPEC = PaymentsSpec(count=100_000, customers=10_000, merchants=500, seed=11)
DELETED = {f"c{i:06d}" for i in range(0, 10_000, 97)}  # tombstoned before the run
UPDATED = {f"c{i:06d}" for i in range(1, 10_000, 3)} - DELETED  # version 1 arrives mid-run


def segment_of(customer: str, version: int) -> str:
    return f"{customer}-v{version}"


def test_payments_enriched_with_a_live_table_and_a_global_table(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    bs = broker.bootstrap
    pay_t, cust_t, merch_t, out_t = (f"{unique}.{n}" for n in ("pay", "cust", "merch", "out"))
    create_topic(bs, pay_t, PARTITIONS)
    create_topic(bs, cust_t, PARTITIONS, **{"cleanup.policy": "compact"})
    create_topic(bs, merch_t, 2)
    profiles = customer_profiles(SPEC)
    produce_json(
        bs,
        cust_t,
        (
            (p["customer_id"], {**p, "version": 0, "segment": segment_of(p["customer_id"], 0)})
            for p in profiles
        ),
    )
    produce(bs, cust_t, [(b"c000005", b"{poison")])  # undecodable: reported, not fatal
    produce(bs, cust_t, [(c.encode(), None) for c in sorted(DELETED)])
    merch = {m["merchant_id"]: m for m in merchants(SPEC)}
    produce_json(bs, merch_t, ((k, m) for k, m in merch.items()))
    pays = list(payments(SPEC))
    half = len(pays) // 2
    produce_json(bs, pay_t, ((p["customer_id"], p) for p in pays[:half]))

    app = rs.App(unique, brokers=bs, commit_interval_ms=200)
    customers = app.table(cust_t, key="customer_id")
    merchant_table = app.global_table(merch_t, key="merchant_id")
    (
        app.stream(pay_t, key="customer_id", time="ts")
        .join(customers, how="left")
        .join(merchant_table, on="merchant_id", right_prefix="merchant_")
        .to(out_t)
    )
    running = app.start(workers=2)
    try:
        produce_json(
            bs,
            cust_t,
            (
                (c, {"customer_id": c, "version": 1, "segment": segment_of(c, 1)})
                for c in sorted(UPDATED)
            ),
        )
        time.sleep(2)
        produce_json(bs, pay_t, ((p["customer_id"], p) for p in pays[half:]))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = running.status()
            assert status["state"] == "running", status
            done = sum(w["records_out"] for w in status["workers"].values())
            if done >= len(pays):
                break
            time.sleep(1)
    finally:
        result = running.stop()
    assert result.state in ("stopped", "finished"), result

    out = read_all(bs, out_t)
    assert len(out) == len(pays)
    by_id = {m.json()["payment_id"]: m for m in out}
    assert set(by_id) == {p["payment_id"] for p in pays}  # each exactly once
    seen_version: dict[str, int] = defaultdict(int)
    updated_seen = 0
    for m in out:  # partition by partition, in offset order
        row = m.json()
        c = row["customer_id"]
        assert m.key == c.encode()
        # The global table: always the merchant's row (the clashing country is renamed).
        mr = merch[row["merchant_id"]]
        assert (row["category"], row["merchant_country"]) == (mr["category"], mr["country"])
        if c in DELETED:
            assert row["version"] is None and row["segment"] is None, row
            continue
        # The table as of the record: a whole version of this customer's profile, never older
        # than one a previous record of the same customer saw (per-key order holds).
        v = row["version"]
        assert v in ((0, 1) if c in UPDATED else (0,)), row
        assert row["segment"] == segment_of(c, v)
        assert v >= seen_version[c], (c, v, seen_version[c])
        seen_version[c] = v
        updated_seen += v
    assert updated_seen > 0, "the profile updates produced during the run were never seen"

    dlq = read_all(bs, f"{cust_t}.dlq")
    assert [(d.key, d.value) for d in dlq] == [(b"c000005", b"{poison")]
    assert dlq[0].headers["rs.operator"] == "decode"
    assert json.loads(out[0].value or b"{}")  # values are JSON objects


def test_joining_topics_with_different_partition_counts_fails_at_start(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    bs = broker.bootstrap
    create_topic(bs, f"{unique}.pay", 4)
    create_topic(bs, f"{unique}.cust", 2)
    app = rs.App(unique, brokers=bs)
    table = app.table(f"{unique}.cust", key="customer_id")
    app.stream(f"{unique}.pay", key="customer_id").join(table).to(f"{unique}.out")
    with pytest.raises(rs.TopologyError) as err:
        app.start(workers=1)
    assert f"'{unique}.pay' (4 partitions)" in str(err.value)
    assert f"'{unique}.cust' (2 partitions)" in str(err.value)
