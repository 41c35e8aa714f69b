"""A process function's state and timers checkpoint like any operator's: checkpoint at random
moments, throw the task away, restore a fresh one from the last committed epoch and go on; the
committed outputs equal an uninterrupted run's (as tests/unit/test_task_checkpoint.py does for
windows and joins)."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

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


class Ledger(rs.ProcessFunction):
    """Per-customer totals, an event-time follow-up per few payments (some cancelled), a
    processing-time reminder, timers that register timers, and a failing amount."""

    def process(self, ctx: rs.ProcessContext, key: Any, value: dict[str, Any]) -> None:
        amount = value["amount"]
        if amount == 13:
            raise ValueError("unlucky amount")
        st = ctx.state
        st["n"] = st.get("n", 0) + 1
        st["total"] = st.get("total", 0) + amount
        st.setdefault("recent", []).append(amount)
        del st["recent"][:-3]
        ctx.emit(
            {"customer": key, "n": st["n"], "total": st["total"], "wm": ctx.watermark}, to="totals"
        )
        if st["n"] % 3 == 1:
            due = ctx.timestamp + 2_000
            ctx.timers.register_event_time(due)
            st.setdefault("due", []).append(due)
        if amount > 45 and st.get("due"):
            ctx.timers.delete_event_time(st["due"].pop(0))
        ctx.timers.register_processing_time((ctx.processing_time // 500 + 1) * 500)

    def on_timer(
        self, ctx: rs.ProcessContext, key: Any, timestamp: int, domain: rs.TimeDomain
    ) -> None:
        st = ctx.state
        if domain is rs.TimeDomain.PROCESSING_TIME:
            st["reminders"] = st.get("reminders", 0) + 1
            ctx.emit({"customer": key, "reminder": st["reminders"]}, to="alerts")
            return
        if timestamp in st.get("due", []):
            st["due"].remove(timestamp)
        ctx.emit({"customer": key, "due": timestamp, "recent": st["recent"]}, to="alerts")
        if st["total"] % 2 == 0:
            ctx.timers.register_event_time(timestamp + 700)  # a follow-up of the follow-up


def build() -> rs.App:
    app = rs.App("pck", brokers="unused:1")
    payments = app.stream("payments", key="customer", time="ts")
    totals, alerts = payments.process(
        Ledger, outputs=("totals", "alerts"), out_of_orderness="1s", name="ledger"
    )
    totals.to("totals")
    alerts.to("alerts")
    return app


def batches(seed: int) -> list[Incoming]:
    rng = random.Random(seed)
    out = []
    offset = 0
    t = T0
    for _ in range(70):
        values, keys, stamps = [], [], []
        for _ in range(rng.randint(1, 10)):
            t += rng.randint(0, 600)
            c = f"c{rng.randint(0, 5)}"
            ts = t - rng.randint(0, 1500)  # out of order
            values.append(json.dumps({"customer": c, "ts": ts, "amount": rng.randint(1, 50)}))
            keys.append(c.encode())
            stamps.append(ts)
        encoded: list[bytes | None] = [v.encode() for v in values]
        out.append(
            Incoming(
                "payments", encoded, list(keys), stamps, list(range(offset, offset + len(values)))
            )
        )
        offset += len(values)
    return out


class Clock:
    """Processing time as a function of input position, so a replay sees the same times."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def runner(app: rs.App, sink: ListSink, clock: Clock) -> TaskRunner:
    return TaskRunner(
        app.name,
        TaskId(0, 0),
        app.plan(),
        sink,
        dlq_topic=lambda t: f"{t}.dlq",
        provenance=functools.partial(hdr.provenance, "0_0", 0, 0),
        clock_ms=clock,
    )


def copy(inc: Incoming) -> Incoming:
    return Incoming(inc.topic, inc.values, inc.keys, inc.timestamps, inc.offsets)


def step(task: TaskRunner, clock: Clock, data: list[Incoming], i: int) -> None:
    """Batch ``i`` at processing time T0 + 180 ms * i, then a tick 90 ms later."""
    clock.now = T0 + 180 * i
    task.process(copy(data[i]))
    clock.now += 90
    task.tick()


@pytest.mark.parametrize("seed", range(5))
def test_restored_process_task_continues_exactly(tmp_path: Path, seed: int) -> None:
    app = build()
    data = batches(seed)
    whole = ListSink()
    clock = Clock()
    ref_task = runner(app, whole, clock)
    for i in range(len(data)):
        step(ref_task, clock, data, i)
    ref_task.finish()

    rng = random.Random(seed + 100)
    store = CheckpointStore(str(tmp_path), app.name)
    committed = ListSink()
    pending = ListSink()
    task = runner(app, pending, clock)
    ck = TaskCheckpointer(store, task, compact_every=3)
    epoch, attempt, last = 0, 1, None
    restores = 0
    i = 0
    while i < len(data):
        step(task, clock, data, i)
        i += 1
        if rng.random() < 0.3 or i == len(data):
            epoch += 1
            last = (ck.write((epoch, attempt), {"x": i}), i)
            committed.records.extend(pending.records)
            pending.records.clear()
        if last is not None and i < len(data) and rng.random() < 0.15:
            pending.records.clear()  # the worker dies: uncommitted outputs are aborted
            attempt += 1
            restores += 1
            task = runner(app, pending, clock)
            ck = TaskCheckpointer(store, task, compact_every=3)
            manifest, i = last
            ck.restore(manifest.ref)
            epoch = manifest.epoch
    task.finish()
    committed.records.extend(pending.records)

    assert restores, "the run was never interrupted"
    for topic in ("totals", "alerts", "payments.dlq"):
        want = [r for r in whole.records if r[0] == topic]
        got = [r for r in committed.records if r[0] == topic]
        assert got == want, topic
        assert want, topic
    alerts = [json.loads(r[2] or b"") for r in whole.records if r[0] == "alerts"]
    assert any(a.get("due") for a in alerts) and any(a.get("reminder") for a in alerts)
    deltas = [m for m in store.manifests("0_0") if not m.full]
    assert deltas, "no delta epoch was written"
