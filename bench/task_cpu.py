"""CPU cost of a worker's task code per record, in this process, without a broker or Ray.

    python -m bench.task_cpu                     # W1 and W2, 200,000 payments
    python -m bench.task_cpu --records 500000 --only w2 --profile

Feeds W1's and W2's payments (the same generator and topology as ``bench.raystream_runs``) to
the tasks of one worker (8 partitions, micro-batches of ``max_batch_records`` spread over the
partitions) through the code a worker runs: ``TaskRunner.process`` (decode, operators, encode),
the real ``OutputSink`` (librdkafka's ``produce``, to a broker that does not exist: records only
queue) and a checkpoint (``TaskCheckpointer.write``) of every task each ``--epoch`` records.
Reports the main thread's CPU seconds (``time.thread_time``), so the figure barely moves with
the load other processes put on the machine, unlike the wall-clock runs of ``bench.run``; and
the whole process's (``time.process_time``: also Arrow's thread pool and librdkafka's threads).
Fetching (``consumer.consume``, the ``Message`` accessors) and the commit's broker round trips
are not included.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import raystream as rs
from bench.raystream_runs import build_w1, build_w2
from raystream._kafka import headers as hdr
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.output import OutputSink
from raystream._runtime.task import Incoming, TaskRunner
from raystream.config import KafkaConfig
from raystream.generate.payments import PaymentsSpec, customer_profiles, payments
from raystream.state.checkpoint import CheckpointStore

PARTITIONS = 8
TOPIC = "payments"
CUSTOMERS = "customers"


def _runners(app: rs.App, out: OutputSink) -> dict[int, TaskRunner]:
    plan = app.plan()
    tasks = plan.tasks({t: PARTITIONS for t in plan.source_topics()})
    return {
        t.partition: TaskRunner(
            app.name,
            t,
            plan,
            out,
            dlq_topic=lambda topic: f"{topic}.dlq",
            provenance=functools.partial(hdr.provenance, str(t), 0, 0),
        )
        for t in tasks
    }


def _partitioned(
    values: list[tuple[bytes, bytes]],
) -> dict[int, list[tuple[bytes, bytes]]]:
    parts: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    for k, v in values:
        parts[zlib.crc32(k) % PARTITIONS].append((k, v))
    return parts


def _feed(runner: TaskRunner, topic: str, recs: list[tuple[bytes, bytes]], first: int) -> None:
    runner.process(
        Incoming(
            topic,
            [v for _, v in recs],
            [k for k, _ in recs],
            [0] * len(recs),
            list(range(first, first + len(recs))),
        )
    )


def run(kind: str, records: int, batch: int, epoch: int, tmp: Path) -> dict[str, float]:
    """Process ``records`` payments through ``kind``'s tasks; CPU seconds by phase."""
    spec = PaymentsSpec(count=records, customers=10_000, merchants=500, seed=7)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    data = [(p["customer_id"].encode(), dumps(p).encode()) for p in payments(spec)]
    app = rs.App(f"cpu-{kind}", brokers="127.0.0.1:1", checkpoints=tmp.as_uri())
    stream = app.stream(TOPIC, value=rs.JSON(), key="customer_id", time="ts")
    if kind == "w1":
        build_w1(app, stream, "out")
    else:
        build_w2(app, stream, CUSTOMERS, "out")
    queue: dict[str, Any] = {
        "queue.buffering.max.messages": 10_000_000,
        "queue.buffering.max.kbytes": 4 << 20,
    }
    out = OutputSink(KafkaConfig(brokers="127.0.0.1:1"), None, None, **queue)
    runners = _runners(app, out)
    store = CheckpointStore(tmp.as_uri(), app.name)
    ckpts = {p: TaskCheckpointer(store, r, compact_every=50) for p, r in runners.items()}
    offsets = dict.fromkeys(runners, 0)
    if kind == "w2":
        profiles = [(c["customer_id"].encode(), dumps(c).encode()) for c in customer_profiles(spec)]
        for p, recs in _partitioned(profiles).items():
            _feed(runners[p], CUSTOMERS, recs, 0)
    clock: Callable[[], float] = time.thread_time
    cpu = {"process": 0.0, "checkpoint": 0.0}
    all_threads = time.process_time()
    since = 0
    ep = 0
    for start in range(0, len(data), batch):
        parts = _partitioned(data[start : start + batch])
        t0 = clock()
        for p, recs in parts.items():
            if recs:
                _feed(runners[p], TOPIC, recs, offsets[p])
                offsets[p] += len(recs)
        cpu["process"] += clock() - t0
        since += batch
        if since >= epoch:
            since = 0
            ep += 1
            t0 = clock()
            for p, ck in ckpts.items():
                ck.write((ep, 0), {f"{TOPIC}[{p}]": offsets[p]})
            cpu["checkpoint"] += clock() - t0
    t0 = clock()
    for r in runners.values():
        r.finish()
    cpu["process"] += clock() - t0
    all_threads = time.process_time() - all_threads
    produced = sum(r.counters.records_out for r in runners.values())
    out.producer.purge()
    total = cpu["process"] + cpu["checkpoint"]
    return {
        "records": records,
        "outputs": produced,
        "cpu_process_s": round(cpu["process"], 3),
        "cpu_checkpoint_s": round(cpu["checkpoint"], 3),
        "us_per_record": round(1e6 * total / records, 2),
        "records_per_cpu_s": round(records / total),
        "us_per_record_all_threads": round(1e6 * all_threads / records, 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000, help="records per poll (all partitions)")
    ap.add_argument("--epoch", type=int, default=10_000, help="records between checkpoints")
    ap.add_argument("--only", choices=["w1", "w2"], action="append")
    ap.add_argument("--profile", action="store_true", help="print a pyinstrument profile")
    args = ap.parse_args(argv)
    for kind in args.only or ["w1", "w2"]:
        with tempfile.TemporaryDirectory() as tmp:
            if args.profile:
                from pyinstrument import Profiler

                prof = Profiler(interval=0.001)
                prof.start()
            res = run(kind, args.records, args.batch, args.epoch, Path(tmp))
            if args.profile:
                prof.stop()
                print(prof.output_text(unicode=False, color=False, show_all=False))
            print(kind, json.dumps(res))


if __name__ == "__main__":
    main()
