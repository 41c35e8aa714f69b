"""Exactly-once under failure: a job with a table join, windows and a running aggregate over
500,000 events while workers are SIGKILLed, the broker is frozen, the app is rescaled or stopped
and started again. Committed state (from checkpoints) and committed output (read through the
read_committed model, see eos_model.py) must equal the reference exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

import raystream as rs
from raystream.dev.broker import EmbeddedBroker

from .eos_model import committed_epochs, committed_records, restored_operator
from .kafka_helpers import create_topic, produce_json, read_all

T0 = 1_767_225_600_000
PARTITIONS = 4
CUSTOMERS = 2_000


def events(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "customer": f"c{rng.randrange(CUSTOMERS)}",
            "amount": rng.randint(1, 500),
            "ts": T0 + i * 2 - rng.randint(0, 2_000),  # a little out of order, within grace
        }
        for i in range(n)
    ]


def weight(customer: str) -> int:
    return int(customer[1:]) % 7 + 1


def build(app: rs.App, unique: str) -> None:
    customers = app.table(f"{unique}.customers", key="customer")
    enriched = app.stream(f"{unique}.events", key="customer", time="ts").join(customers, how="left")
    (
        enriched.group_by("customer")
        .window(rs.tumbling("10s"), grace="5s")
        .agg(n=rs.count(), total=rs.sum("amount"), weights=rs.sum("weight"))
        .to(f"{unique}.windows")
    )
    enriched.group_by("customer").agg(n=rs.count(), total=rs.sum("amount"), name="totals")


def reference(rows: list[dict]) -> tuple[Counter, dict[str, tuple[int, int]]]:
    windows: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        c = r["customer"]
        w = windows[(c, r["ts"] - r["ts"] % 10_000)]
        w[0] += 1
        w[1] += r["amount"]
        w[2] += weight(c)
        totals[c][0] += 1
        totals[c][1] += r["amount"]
    expected = Counter(
        json.dumps([c, start, *v], separators=(",", ":")) for (c, start), v in windows.items()
    )
    return expected, {c: (v[0], v[1]) for c, v in totals.items()}


def prepare(broker: EmbeddedBroker, unique: str, n: int, seed: int) -> list[dict]:
    bs = broker.bootstrap
    create_topic(bs, f"{unique}.events", PARTITIONS)
    create_topic(bs, f"{unique}.customers", PARTITIONS, **{"cleanup.policy": "compact"})
    produce_json(
        bs,
        f"{unique}.customers",
        ((f"c{i}", {"customer": f"c{i}", "weight": weight(f"c{i}")}) for i in range(CUSTOMERS)),
    )
    rows = events(n, seed)
    produce_json(bs, f"{unique}.events", ((r["customer"], r) for r in rows))
    return rows


def new_app(broker: EmbeddedBroker, unique: str, tmp_path: Path) -> rs.App:
    app = rs.App(
        unique,
        brokers=broker.bootstrap,
        checkpoints=(tmp_path / "checkpoints").as_uri(),
        checkpoint_retain=1_000_000,  # keep every epoch: the model follows the whole lineage
        checkpoint_compact_every=20,
        commit_interval_ms=200,
    )
    build(app, unique)
    return app


def check(app: rs.App, broker: EmbeddedBroker, unique: str, rows: list[dict]) -> None:
    expected_windows, expected_totals = reference(rows)
    parts = {f"{unique}.events": PARTITIONS, f"{unique}.customers": PARTITIONS}
    heads = committed_epochs(app, broker.bootstrap, parts)
    assert len(heads) == PARTITIONS, heads
    out = read_all(broker.bootstrap, f"{unique}.windows")
    kept = committed_records(app, heads, out)
    print(f"\n{len(out)} window records, {len(out) - len(kept)} aborted; heads {heads}")
    got = Counter(
        json.dumps(
            [v["customer"], v["window_start"], v["n"], v["total"], v["weights"]],
            separators=(",", ":"),
        )
        for v in (m.json() for m in kept)
    )
    missing = expected_windows - got
    extra = got - expected_windows
    assert not missing and not extra, (
        f"{sum(missing.values())} windows missing, {sum(extra.values())} extra "
        f"(of {sum(expected_windows.values())}; {len(out) - len(kept)} aborted records dropped); "
        f"by task: {_where(missing, kept)}"
    )
    totals: dict[str, tuple[int, int]] = {}
    for task, head in heads.items():
        table = restored_operator(app, task, head, "totals").current()
        for c, n, total in zip(
            table["customer"].to_pylist(),
            table["n"].to_pylist(),
            table["total"].to_pylist(),
            strict=True,
        ):
            assert c not in totals, f"{c} in two tasks"
            totals[c] = (n, total)
    assert totals == expected_totals


def _where(missing: Counter, kept: list) -> dict[str, tuple[int, int, int]]:
    """Where the missing windows are: per task, how many and their first and last start."""
    task_of = {m.json()["customer"]: m.headers.get("rs.task", "?") for m in kept}
    by: dict[str, list[int]] = defaultdict(list)
    for w in missing:
        customer, start = json.loads(w)[:2]
        by[task_of.get(customer, "?")].append(start)
    return {t: (len(v), min(v), max(v)) for t, v in sorted(by.items())}


def run_with(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    n: int,
    chaos: Callable[[rs.RunningApp], None],
    workers: int = 2,
) -> None:
    rows = prepare(broker, unique, n, seed=len(unique))
    app = new_app(broker, unique, tmp_path)
    running = app.start(workers=workers, bounded=True)
    try:
        chaos(running)
        state = running.wait(timeout=600)
        assert state == "finished", running.status()
    finally:
        result = running.stop()
    assert result.state == "finished", result.status
    check(app, broker, unique, rows)


def test_exact_results_with_five_worker_kills(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    kills: list[int] = []

    def chaos(running: rs.RunningApp) -> None:
        for _ in range(5):
            time.sleep(rng.uniform(1.0, 4.0))
            if running.wait(timeout=0) != "running":
                break
            pids = running.worker_pids()
            slot = rng.choice(sorted(pids))
            os.kill(pids[slot], signal.SIGKILL)
            kills.append(slot)

    run_with(broker, unique, tmp_path, 500_000, chaos)
    assert len(kills) == 5, f"the run ended after {len(kills)} kills: make it longer"


def test_exact_results_with_the_broker_frozen_for_ten_seconds(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    def chaos(running: rs.RunningApp) -> None:
        time.sleep(3)
        assert running.wait(timeout=0) == "running", "the run ended before the broker froze"
        broker.pause()
        try:
            time.sleep(10)
        finally:
            broker.resume()

    run_with(broker, unique, tmp_path, 500_000, chaos)


def test_exact_results_when_rescaled_two_four_one(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    def chaos(running: rs.RunningApp) -> None:
        for n in (4, 1):
            time.sleep(3)
            assert running.wait(timeout=0) == "running", "the run ended before the rescale"
            status = running.rescale(n)
            assert len(status["assignments"]) == n

    run_with(broker, unique, tmp_path, 500_000, chaos)


def test_exact_results_when_stopped_and_started_by_a_new_driver(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    rows = prepare(broker, unique, 300_000, seed=3)
    first = new_app(broker, unique, tmp_path)
    running = first.start(workers=2, bounded=True)
    # Stop once a first epoch has committed, however slow the machine's start is.
    deadline = time.monotonic() + 120
    while running.status()["totals"]["records_in"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running.wait(timeout=0) == "running", "the first run ended before the stop"
    stopped = running.stop()
    assert stopped.state == "stopped" and stopped.records_in > 0
    second = new_app(broker, unique, tmp_path)  # as a new driver would build it
    result = second.run(workers=3, bounded=True, timeout=600)
    assert result.state == "finished", result.status
    check(second, broker, unique, rows)


@pytest.mark.parametrize("guarantee", ["at_least_once"])
def test_at_least_once_keeps_exact_state_and_loses_no_output(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path, guarantee: str
) -> None:
    rows = prepare(broker, unique, 100_000, seed=9)
    app = new_app(broker, unique, tmp_path)
    app.config = app.config.with_(guarantee=guarantee)
    result = app.run(workers=2, bounded=True, timeout=600)
    assert result.state == "finished"
    check(app, broker, unique, rows)


def test_exact_results_when_a_worker_node_is_lost(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    # Its own multi-node Ray cluster, so its own process (a process joins one Ray only).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.node_loss_run", broker.bootstrap, unique,
         str(tmp_path)],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert "exact after losing a node" in proc.stdout, tail
