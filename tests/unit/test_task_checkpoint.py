"""Checkpoint a task's state at random moments, throw the task away, restore a fresh one from the
epoch and go on: the outputs equal an uninterrupted run's. Aborted epochs leave no trace."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

import raystream as rs
from raystream._kafka import headers as hdr
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.task import Incoming, TaskRunner
from raystream.state.checkpoint import CheckpointStore
from raystream.topology.plan import TaskId

T0 = 1_767_225_600_000


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, int]] = []

    def send(self, topic, value, key, timestamp, headers) -> None:  # type: ignore[no-untyped-def]
        self.records.append((topic, key, value, timestamp))


def build() -> rs.App:
    app = rs.App("ck", brokers="unused:1")
    profile = pa.schema([("customer", pa.string()), ("tier", pa.int64())])
    customers = app.table("customers", key="customer", value=rs.JSON(profile))
    orders = app.stream("orders", key="customer", time="ts")
    payments = app.stream("payments", key="customer", time="ts")
    enriched = payments.join(customers, how="left")
    enriched.to("enriched")
    (
        enriched.group_by("customer")
        .window(rs.tumbling("10s"), grace="2s")
        .agg(n=rs.count(), total=rs.sum("amount"), tiers=rs.count_distinct("tier"))
        .to("windows")
    )
    payments.group_by("customer").window(rs.session("3s")).agg(n=rs.count()).to("sessions")
    payments.join(orders, window="5s", how="outer").to("matched")
    return app


def batches(seed: int) -> list[Incoming]:
    rng = random.Random(seed)
    offsets = {"customers": 0, "payments": 0, "orders": 0}
    out = []
    t = T0
    for _ in range(60):
        topic = rng.choice(["customers", "payments", "payments", "orders"])
        values, keys, stamps = [], [], []
        for _ in range(rng.randint(1, 12)):
            t += rng.randint(0, 700)
            c = f"c{rng.randint(0, 6)}"
            ts = t - rng.randint(0, 3000)  # out of order
            if topic == "customers":
                if rng.random() < 0.2:
                    values.append(None)
                else:
                    values.append(json.dumps({"customer": c, "tier": rng.randint(1, 3)}).encode())
            else:
                row = {"customer": c, "ts": ts, "amount": rng.randint(1, 50)}
                values.append(json.dumps(row).encode())
            keys.append(c.encode())
            stamps.append(ts)
        start = offsets[topic]
        offsets[topic] += len(values)
        out.append(Incoming(topic, values, keys, stamps, list(range(start, start + len(values)))))
    return out


def runner(app: rs.App, sink: ListSink) -> TaskRunner:
    return TaskRunner(
        app.name,
        TaskId(0, 0),
        app.plan(),
        sink,
        dlq_topic=lambda t: f"{t}.dlq",
        provenance=functools.partial(hdr.provenance, "0_0", 0, 0),
    )


def copy(inc: Incoming) -> Incoming:
    return Incoming(inc.topic, inc.values, inc.keys, inc.timestamps, inc.offsets)


@pytest.mark.parametrize("seed", range(4))
def test_restored_task_continues_exactly(tmp_path: Path, seed: int) -> None:
    app = build()
    assert len(app.plan().subtopologies) == 1
    data = batches(seed)
    whole = ListSink()
    ref_task = runner(app, whole)
    for inc in data:
        ref_task.process(copy(inc))
    ref_task.finish()

    rng = random.Random(seed + 100)
    store = CheckpointStore(str(tmp_path), app.name)
    committed = ListSink()  # outputs of committed epochs only
    pending = ListSink()
    task = runner(app, pending)
    ck = TaskCheckpointer(store, task, compact_every=3)
    epoch, attempt, last = 0, 1, None
    i = 0
    while i < len(data):
        task.process(copy(data[i]))
        i += 1
        if rng.random() < 0.25 or i == len(data):
            epoch += 1
            last = (ck.write((epoch, attempt), {"x": i}), i)
            committed.records.extend(pending.records)
            pending.records.clear()
        if last is not None and rng.random() < 0.15:
            # The worker dies: uncommitted outputs are aborted; a new attempt restores the last
            # committed epoch into a fresh task and goes on from its offsets.
            pending.records.clear()
            attempt += 1
            task = runner(app, pending)
            ck = TaskCheckpointer(store, task, compact_every=3)
            manifest, i = last
            ck.restore(manifest.ref)
            epoch = manifest.epoch
    task.finish()
    committed.records.extend(pending.records)

    for topic in ("enriched", "windows", "sessions", "matched"):
        want = [r for r in whole.records if r[0] == topic]
        got = [r for r in committed.records if r[0] == topic]
        assert sorted(got, key=repr) == sorted(want, key=repr), topic
        assert want, topic
    deltas = [m for m in store.manifests("0_0") if not m.full]
    assert deltas, "no delta epoch was written"
