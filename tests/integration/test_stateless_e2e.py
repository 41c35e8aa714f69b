"""Stateless jobs end to end: embedded broker, local Ray, 2 and 4 workers, a killed worker,
a frozen one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

import raystream as rs
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import create_topic, produce, produce_json, read_all

N = 100_000
PARTITIONS = 8
CUSTOMERS = 1_000


def payments(n: int) -> list[tuple[str, dict[str, int | str]]]:
    seq: dict[str, int] = defaultdict(int)
    out = []
    for i in range(n):
        c = f"c{(i * 7919) % CUSTOMERS}"
        out.append((c, {"id": i, "customer": c, "amount": (i * 37) % 2000, "seq": seq[c]}))
        seq[c] += 1
    return out


def build(app: rs.App, src: str, prefix: str) -> None:
    s = app.stream(src, key="customer")
    big, small, rest = s.branch(lambda r: r["amount"] >= 1500, lambda r: r["amount"] < 100)
    big.map(lambda r: {**r, "review": True}).to(f"{prefix}.review")
    small.flat_map(lambda r: [{**r, "copy": 0}, {**r, "copy": 1}]).to(f"{prefix}.small")
    rest.filter(lambda r: r["amount"] % 2 == 0).to(f"{prefix}.even")


def expected(rows: list[tuple[str, dict]]) -> dict[str, Counter]:
    exp: dict[str, Counter] = {"review": Counter(), "small": Counter(), "even": Counter()}
    for _, r in rows:
        if r["amount"] >= 1500:
            exp["review"][json.dumps({**r, "review": True}, sort_keys=True)] += 1
        elif r["amount"] < 100:
            for copy in (0, 1):
                exp["small"][json.dumps({**r, "copy": copy}, sort_keys=True)] += 1
        elif r["amount"] % 2 == 0:
            exp["even"][json.dumps(r, sort_keys=True)] += 1
    return exp


@pytest.mark.parametrize("workers", [2, 4])
def test_stateless_job_output_is_exact_and_ordered_per_key(
    broker: EmbeddedBroker, ray_local: None, unique: str, workers: int
) -> None:
    src = f"{unique}.payments"
    create_topic(broker.bootstrap, src, PARTITIONS)
    rows = payments(N)
    produce_json(broker.bootstrap, src, rows)
    app = rs.App(unique, brokers=broker.bootstrap)
    build(app, src, unique)

    result = app.run(workers=workers, bounded=True, timeout=300)

    assert result.state == "finished"
    assert result.records_in == N and result.dead_letters == 0
    assert len(result.status["assignments"]) == workers
    owned = sorted(t for ts in result.status["assignments"].values() for t in ts)
    assert owned == sorted(f"0_{p}" for p in range(PARTITIONS))
    exp = expected(rows)
    for name, want in exp.items():
        msgs = read_all(broker.bootstrap, f"{unique}.{name}")
        got = Counter(json.dumps(m.json(), sort_keys=True) for m in msgs)
        assert got == want, name
        # Order per key: within a partition, a customer's records keep their input order.
        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            v = m.json()
            assert m.key == v["customer"].encode()
            k = (v["customer"], v.get("copy", 0))
            assert last.get(k, -1) < v["seq"], f"{name}: {k} out of order"
            last[k] = v["seq"]
    assert result.records_out == sum(sum(c.values()) for c in exp.values())


NUMBERS = 200_000


def _start_numbers_job(
    broker: EmbeddedBroker, unique: str, **settings: Any
) -> tuple[rs.RunningApp, int, dict[str, Any] | None]:
    """``NUMBERS`` records mapped to ``<unique>.out`` by 2 workers (bounded), started and run
    until worker 0 has committed some; returns the app, worker 0's pid and its report then."""
    src = f"{unique}.in"
    create_topic(broker.bootstrap, src, PARTITIONS)
    produce(broker.bootstrap, src, ((b"k%d" % (i % 500), b"%d" % i) for i in range(NUMBERS)))
    app = rs.App(unique, brokers=broker.bootstrap, max_batch_records=2_000, **settings)
    app.stream(src, value=rs.String()).map(lambda r: {"v": int(r["value"])}).to(f"{unique}.out")
    running = app.start(workers=2, bounded=True)
    victim = running.worker_pids()[0]
    deadline = time.monotonic() + 60
    w = None
    while time.monotonic() < deadline:
        w = running.status()["workers"].get(0)
        if w and w["records_in"] > 0:
            break
        time.sleep(0.05)
    return running, victim, w


def _assert_every_number_out(broker: EmbeddedBroker, unique: str) -> None:
    seen = Counter(m.json()["v"] for m in read_all(broker.bootstrap, f"{unique}.out"))
    missing = [i for i in range(NUMBERS) if seen[i] == 0]
    assert not missing, f"{len(missing)} inputs lost, e.g. {missing[:5]}"


def test_killed_worker_is_restarted_and_every_input_is_processed(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    running, victim, w = _start_numbers_job(broker, unique)
    # The victim has committed some progress: kill its process outright.
    os.kill(victim, signal.SIGKILL)
    state = running.wait(timeout=300)
    status = running.status()
    result = running.stop()

    assert state == "finished", status
    # The kill landed mid-run: the victim had committed only part of its partitions.
    from raystream._kafka.admin import end_offsets

    mine = [(f"{unique}.in", int(t.split("_")[1])) for t in result.status["assignments"][0]]
    ends = end_offsets(rs.KafkaConfig(broker.bootstrap), mine)
    assert w is not None and w["state"] != "finished"
    assert sum(w["positions"].values()) < sum(ends.values())
    assert result.status["attempts"][0] >= 1, "the killed slot never came back"
    assert result.status["workers"][0]["pid"] != victim
    # The restarted attempt's counters start at 0; the run's totals still hold every input
    # once (what the killed attempt committed, plus the rest, reprocessing counted once).
    assert result.records_in == NUMBERS, (result.records_in, result.status["totals"])
    assert result.records_out == NUMBERS and result.dead_letters == 0
    _assert_every_number_out(broker, unique)


def test_a_frozen_worker_is_replaced_by_the_watchdog_and_the_totals_stay_exact(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    running, victim, w = _start_numbers_job(broker, unique, stall_timeout_ms=5_000)
    os.kill(victim, signal.SIGSTOP)  # hung: alive, but never commits again
    try:
        state = running.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    result = running.stop()

    assert state == "finished", result.status
    assert w is not None and w["state"] != "finished", "the freeze came too late"
    assert result.status["attempts"][0] >= 1, "the watchdog never replaced the frozen worker"
    assert result.status["workers"][0]["pid"] != victim
    assert result.records_in == NUMBERS, (result.records_in, result.status["totals"])
    assert result.records_out == NUMBERS
    _assert_every_number_out(broker, unique)


def test_undecodable_records_do_not_stop_the_partition(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    src = f"{unique}.in"
    create_topic(broker.bootstrap, src, 2)
    good = [(b"k%d" % i, json.dumps({"i": i}).encode()) for i in range(1000)]
    bad = [(b"k1", b"{broken"), (b"k2", b"\xff\xfe"), (b"k3", b"[1,2,3]")]
    produce(broker.bootstrap, src, good[:500] + bad + good[500:])
    app = rs.App(unique, brokers=broker.bootstrap)
    app.stream(src).map(lambda r: {"i": r["i"], "ok": True}).to(f"{unique}.out")

    result = app.run(workers=1, bounded=True, timeout=120)

    assert result.state == "finished"
    assert result.dead_letters == 3 and result.records_in == 1003
    out = sorted(m.json()["i"] for m in read_all(broker.bootstrap, f"{unique}.out"))
    assert out == list(range(1000))
    dlq = read_all(broker.bootstrap, f"{src}.dlq")
    assert sorted(m.value for m in dlq) == sorted(v for _, v in bad)
    for m in dlq:
        assert m.headers["rs.source.topic"] == src
        assert m.headers["rs.operator"] == "decode"
        assert m.headers["rs.app"] == unique
        assert "SerdeError" in m.headers["rs.error.class"]


def test_missing_input_topic_fails_fast_with_the_topic_name(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    app = rs.App(unique, brokers=broker.bootstrap)
    app.stream(f"{unique}.nope").to(f"{unique}.out")
    with pytest.raises(rs.TopicNotFoundError, match=f"{unique}.nope"):
        app.run(workers=1, bounded=True, timeout=30)


def test_an_epochs_topic_too_small_for_the_tasks_fails_fast_and_says_what_to_do(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    """As left by an earlier run with fewer input partitions, or by a build of raystream that
    kept 2 partitions per task (4 tasks need 20 now)."""
    create_topic(broker.bootstrap, f"{unique}.in", 4)
    create_topic(broker.bootstrap, f"{unique}-epochs", 8)
    app = rs.App(unique, brokers=broker.bootstrap)
    app.stream(f"{unique}.in").to(f"{unique}.out")
    with pytest.raises(rs.TopologyError, match=r"has room for 1: .* Start it under a new name"):
        app.run(workers=1, bounded=True, timeout=30)


def test_graceful_stop_commits_and_a_restart_resumes_without_duplicates(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    src, out = f"{unique}.in", f"{unique}.out"
    create_topic(broker.bootstrap, src, 4)
    produce(broker.bootstrap, src, ((b"k%d" % (i % 50), b"%d" % i) for i in range(30_000)))

    def build() -> rs.App:
        app = rs.App(unique, brokers=broker.bootstrap)
        app.stream(src, value=rs.String()).map(lambda r: {"v": int(r["value"])}).to(out)
        return app

    running = build().start(workers=2)  # unbounded: runs until stopped
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(w["records_in"] for w in running.status()["workers"].values()) >= 30_000:
            break
        time.sleep(0.1)
    first = running.stop()
    assert first.state == "stopped" and first.records_in == 30_000

    from raystream._kafka.admin import committed_offsets

    cfg = rs.KafkaConfig(broker.bootstrap)
    committed = committed_offsets(cfg, unique, [(src, p) for p in range(4)])
    assert sum(v or 0 for v in committed.values()) == 30_000

    produce(broker.bootstrap, src, ((b"k%d" % (i % 50), b"%d" % i) for i in range(30_000, 40_000)))
    second = build().run(workers=3, bounded=True, timeout=120)
    assert second.state == "finished" and second.records_in == 10_000
    values = sorted(m.json()["v"] for m in read_all(broker.bootstrap, out))
    assert values == list(range(40_000))


def test_commit_when_caught_up_ends_epochs_without_waiting_out_the_interval(
    broker: EmbeddedBroker, ray_local: None, unique: str
) -> None:
    from raystream._kafka.admin import committed_offsets

    src, out = f"{unique}.in", f"{unique}.out"
    create_topic(broker.bootstrap, src, 2)
    app = rs.App(
        unique,
        brokers=broker.bootstrap,
        commit_interval_ms=120_000,  # longer than the test waits
        stall_timeout_ms=1_200_000,
        commit_when_caught_up=True,
    )
    app.stream(src).map(lambda r: {**r, "seen": True}).to(out)
    cfg = rs.KafkaConfig(broker.bootstrap)

    def committed() -> int:
        got = committed_offsets(cfg, unique, [(src, 0), (src, 1)])
        return sum(v or 0 for v in got.values())

    running = app.start(workers=1)
    try:
        sent = 0
        for burst in (100, 50):
            produce_json(
                broker.bootstrap, src, ((f"k{i}", {"i": i}) for i in range(sent, sent + burst))
            )
            sent += burst
            deadline = time.monotonic() + 60
            while committed() < sent and time.monotonic() < deadline:
                time.sleep(0.2)
            assert committed() == sent, running.status()["workers"]
    finally:
        result = running.stop()
    assert result.records_in == 150 and result.records_out == 150
    assert sorted(m.json()["i"] for m in read_all(broker.bootstrap, out)) == list(range(150))
