"""Windowed aggregation end to end: broker, Ray workers, results equal to the reference."""

from __future__ import annotations

import json
import random
from collections import Counter

import raystream as rs
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic, produce, read_all

N = 200_000
T0 = 1_767_225_600_000  # event times are real epoch ms: Kafka reads a timestamp of 0 as "now"
PARTITIONS = 4


def events(n: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = f"c{rng.randrange(2_000)}"
        ts = 1_000_000 + i * 5 + rng.randint(-300, 300)
        if rng.random() < 0.002:
            ts -= 60_000  # far behind: late for its window
        out.append((c.encode(), json.dumps({"customer": c, "amount": i % 97, "ts": ts}).encode()))
    return out


def test_tumbling_windows_equal_the_reference_and_late_records_are_routed(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    src, out, late = f"{unique}.payments", f"{unique}.per-customer", f"{unique}.late"
    create_topic(broker.bootstrap, src, PARTITIONS)
    produce(broker.bootstrap, src, events(N))
    app = rs.App(unique, brokers=broker.bootstrap, late_topic=late)
    window, grace = rs.tumbling(10_000), 2_000
    (
        app.stream(src, key="customer", time="ts")
        .group_by("customer")
        .window(window, grace=grace)
        .agg(n=rs.count(), total=rs.sum("amount"), biggest=rs.max("amount"))
        .to(out)
    )

    result = app.run(workers=3, bounded=True, timeout=600)
    assert result.state == "finished" and result.records_in == N

    # The reference, record by record, per partition in offset order (= each task's input):
    # the watermark is the largest event time so far, including the record; a record whose
    # window end + grace <= watermark is late; every other window is emitted once.
    size, grace_ms = 10_000, 2_000
    windows: dict[tuple[str, int], list[int]] = {}
    want_late: set[tuple[int, int]] = set()
    inputs = read_all(broker.bootstrap, src)
    wm: dict[int, int] = {}
    for m in inputs:
        v = m.json()
        wm[m.partition] = max(wm.get(m.partition, v["ts"]), v["ts"])
        start = v["ts"] - v["ts"] % size
        if start + size + grace_ms <= wm[m.partition]:
            want_late.add((m.partition, m.offset))
            continue
        windows.setdefault((v["customer"], start), []).append(v["amount"])
    want_rows = Counter((c, s, s + size, len(a), sum(a), max(a)) for (c, s), a in windows.items())

    got = read_all(broker.bootstrap, out)
    got_rows = Counter(
        (v["customer"], v["window_start"], v["window_end"], v["n"], v["total"], v["biggest"])
        for v in (m.json() for m in got)
    )
    assert got_rows == want_rows
    # emit="final": one result per (key, window).
    assert len({(r[0], r[1]) for r in got_rows.elements()}) == sum(got_rows.values())
    assert want_late, "the input was built to contain late records"
    offsets = {(m.partition, m.offset): json.dumps(m.json(), sort_keys=True) for m in inputs}
    late_msgs = read_all(broker.bootstrap, late)
    got_late = Counter(json.dumps(m.json(), sort_keys=True) for m in late_msgs)
    assert got_late == Counter(offsets[po] for po in want_late)
    assert all("window closed" in m.headers["rs.late.reason"] for m in late_msgs)


def test_group_by_another_key_repartitions_and_sessions_are_exact(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    src, out = f"{unique}.clicks", f"{unique}.sessions"
    create_topic(broker.bootstrap, src, PARTITIONS)
    rng = random.Random(5)
    rows = []
    for i in range(30_000):
        user, page = f"u{rng.randrange(300)}", f"p{rng.randrange(40)}"
        rows.append(
            (user.encode(), json.dumps({"user": user, "page": page, "ts": T0 + i * 20}).encode())
        )
    produce(broker.bootstrap, src, rows)
    app = rs.App(unique, brokers=broker.bootstrap)
    (
        app.stream(src, key="user", time="ts")
        .group_by("page", partitions=3)
        # The whole run fits in the grace period: no record can be late, whatever the order in
        # which upstream tasks feed the repartition topic, so the result is exact.
        .window(rs.session("500ms"), grace="1h")
        .agg(clicks=rs.count(), users=rs.count_distinct("user"))
        .to(out)
    )
    result = app.run(workers=2, bounded=True, timeout=600)
    assert result.state == "finished"
    (internal,) = app.plan().internal_topics()
    assert len(read_all(broker.bootstrap, internal)) == 30_000
    assert read_all(broker.bootstrap, f"{unique}.late") == []

    # Reference: sessions per page over all clicks, in event-time order (grace covers all).
    by_page: dict[str, list[tuple[int, str]]] = {}
    for _, v in rows:
        d = json.loads(v)
        by_page.setdefault(d["page"], []).append((d["ts"], d["user"]))
    want = Counter()
    for page, clicks in by_page.items():
        clicks.sort()
        start, last, users, n = clicks[0][0], clicks[0][0], {clicks[0][1]}, 1
        for ts, user in clicks[1:]:
            if ts - last > 500:
                want[(page, start, last, n, len(users))] += 1
                start, users, n = ts, set(), 0
            last = ts
            users.add(user)
            n += 1
        want[(page, start, last, n, len(users))] += 1
    got = Counter(
        (v["page"], v["window_start"], v["window_end"], v["clicks"], v["users"])
        for v in (m.json() for m in read_all(broker.bootstrap, out))
    )
    assert got == want


def test_a_failing_custom_reducer_fails_the_app_with_its_error(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    src = f"{unique}.in"
    create_topic(broker.bootstrap, src, 1)
    produce(
        broker.bootstrap,
        src,
        [(b"k", json.dumps({"k": "k", "v": v, "ts": T0 + v}).encode()) for v in (1, 2, 0, 3)],
    )

    def add(acc: float, row: dict) -> float:
        return acc + 1 / row["v"]  # ZeroDivisionError on v == 0

    app = rs.App(unique, brokers=broker.bootstrap)
    (
        app.stream(src, key="k", time="ts")
        .group_by()
        .window(rs.tumbling(1000))
        .agg(inv=rs.custom(lambda: 0.0, add))
        .to(f"{unique}.out")
    )
    result = app.run(workers=1, bounded=True, timeout=120)
    assert result.state == "failed"
    (worker,) = result.status["workers"].values()
    assert worker["fatal"] and "UserFunctionError" in worker["last_error"]
    assert "division by zero" in worker["last_error"]
