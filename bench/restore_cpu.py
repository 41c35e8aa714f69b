"""Checkpoint restore time for W4's state (1M open tumbling windows), in this process.

    python -m bench.restore_cpu                    # 1,000,000 keys, 30 small deltas
    python -m bench.restore_cpu --keys 200000 --deltas 10 --profile

Builds W4's topology (count and sum per key in one 10 s tumbling window) for ``--tasks`` tasks,
feeds ``--keys`` distinct keys, writes a full epoch, then ``--deltas`` delta epochs each
touching ``--touch`` random keys (W4's trickle), and times ``TaskCheckpointer.restore`` of the
last epoch into fresh tasks: the checkpoint part of a worker's recovery, without Ray or Kafka.
Checks that every restored window equals the one written.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import tempfile
import time
from pathlib import Path

import raystream as rs
from raystream._kafka import headers as hdr
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.task import Incoming, TaskRunner
from raystream.state.base import KeyedStore
from raystream.state.checkpoint import CheckpointStore

T0 = 1_767_225_600_000


class _NullSink:
    def send(self, *args: object) -> None:
        pass


def _runners(app: rs.App, tasks: int) -> list[TaskRunner]:
    plan = app.plan()
    return [
        TaskRunner(
            app.name,
            t,
            plan,
            _NullSink(),  # type: ignore[arg-type]
            dlq_topic=lambda topic: f"{topic}.dlq",
            provenance=functools.partial(hdr.provenance, str(t), 0, 0),
        )
        for t in plan.tasks({"in": tasks})
    ]


def _feed(r: TaskRunner, keys: list[int], first: int) -> None:
    vals = [b'{"key":"k%07d","amount":1.0,"ts":%d}' % (k, T0 + k % 9_000) for k in keys]
    r.process(
        Incoming(
            "in",
            vals,
            [b"k%07d" % k for k in keys],
            [0] * len(keys),
            list(range(first, first + len(keys))),
        )
    )


def _stores(r: TaskRunner) -> list[KeyedStore]:
    return [s for op in r.operators.values() for s in op.state_stores()]


def run(keys: int, tasks: int, deltas: int, touch: int, tmp: Path) -> dict[str, float]:
    app = rs.App("restore-cpu", brokers="127.0.0.1:1", checkpoints=tmp.as_uri())
    (
        app.stream("in", key="key", time="ts")
        .group_by("key")
        .window(rs.tumbling("10s"))
        .agg(n=rs.count(), total=rs.sum("amount"))
        .to("out")
    )
    store = CheckpointStore(tmp.as_uri(), app.name)
    runners = _runners(app, tasks)
    cks = [TaskCheckpointer(store, r, compact_every=10_000) for r in runners]
    offsets = [0] * tasks
    by_task: list[list[int]] = [[] for _ in range(tasks)]
    for k in range(keys):
        by_task[k % tasks].append(k)
    for i, r in enumerate(runners):
        for s in range(0, len(by_task[i]), 10_000):
            chunk = by_task[i][s : s + 10_000]
            _feed(r, chunk, offsets[i])
            offsets[i] += len(chunk)
    t0 = time.perf_counter()
    for i, ck in enumerate(cks):
        ck.write((1, 0), {f"in[{i}]": offsets[i]})
    full_s = time.perf_counter() - t0
    rng = random.Random(7)
    for e in range(2, deltas + 2):
        for i, (r, ck) in enumerate(zip(runners, cks, strict=True)):
            chunk = [rng.choice(by_task[i]) for _ in range(max(touch // tasks, 1))]
            _feed(r, chunk, offsets[i])
            offsets[i] += len(chunk)
            ck.write((e, 0), {f"in[{i}]": offsets[i]})
    fresh = _runners(app, tasks)
    t0, c0 = time.perf_counter(), time.thread_time()
    for r, ck in zip(fresh, cks, strict=True):
        TaskCheckpointer(store, r, compact_every=10_000).restore(ck.head.ref)  # type: ignore[union-attr]
    restore_s, restore_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    for a, b in zip(runners, fresh, strict=True):
        for sa, sb in zip(_stores(a), _stores(b), strict=True):
            if dict(sa.items()) != dict(sb.items()):
                raise SystemExit("restored state differs from the state written")
    return {
        "keys": keys,
        "tasks": tasks,
        "deltas": deltas,
        "full_epoch_write_s": round(full_s, 2),
        "restore_s": round(restore_s, 2),
        "restore_cpu_s": round(restore_cpu_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--deltas", type=int, default=30)
    ap.add_argument("--touch", type=int, default=200, help="keys each delta epoch changes")
    ap.add_argument("--profile", action="store_true", help="print a pyinstrument profile")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        if args.profile:
            from pyinstrument import Profiler

            with Profiler() as prof:
                res = run(args.keys, args.tasks, args.deltas, args.touch, Path(tmp))
            print(prof.output_text(color=False, show_all=False))
        else:
            res = run(args.keys, args.tasks, args.deltas, args.touch, Path(tmp))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
