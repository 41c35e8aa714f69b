"""W3 as the simplest hand-written confluent-kafka loop: W1 and W2 over one input, unbounded, at
the fixed input rate, measured by the same harness as raystream's W3 (``bench.w3``).

One process (spawned, so it has a core's worth of GIL to itself, like a raystream worker):
``consume()`` with a 5 ms wait, ``json.loads`` once per payment, the enriched payment written to
W2's topic (timestamp = its ``ts``), the payment added to W1's per-partition tumbling windows
(``bench.baseline.TumblingCountSum``: a window's result is written when the partition's largest
event time reaches its end). Every ``commit_interval_ms`` it commits: a transaction with the
input offsets for exactly-once (input read ``read_committed``), a flush and an offset commit for
at-least-once. It keeps no state checkpoint. The figures to compare with raystream's are the
latencies of the same run: they show what the broker alone costs at this rate.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message
from confluent_kafka import TopicPartition as TP

from bench.baseline import (
    _NO_PROFILE,
    Sink,
    TumblingCountSum,
    _check,
    _consumer,
    load_profiles,
    w1_emitter,
)
from bench.cpu import proc_mib
from bench.registry import Measurement, RunContext, register
from bench.w3 import W3Run, W3Topics

#: The longest ``consume()`` waits for records (the loop's own micro-batching delay).
CONSUME_WAIT_S = 0.005
#: Records asked for per ``consume()`` call.
BATCH = 10_000


def w3_loop(
    ctx: RunContext,
    topics: W3Topics,
    profiles: dict[str, dict[str, Any]],
    interval_ms: int,
    ready: Event,
    stop: Event,
    conn: Connection,
) -> None:
    """The loop's process: run until ``stop``, then commit what is left and send its counters."""
    eos = ctx.guarantee == "exactly_once"
    consumer = _consumer(ctx, "read_committed" if eos else "read_uncommitted")
    try:
        tps = [TP(topics.input, p) for p in range(topics.partitions)]
        consumer.assign([TP(topics.input, p, OFFSET_BEGINNING) for p in range(topics.partitions)])
        sink = Sink(ctx, consumer)
        agg = TumblingCountSum(topics.partitions, w1_emitter(sink, topics.w1))
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        loads = json.loads
        produce = sink.produce
        w2 = topics.w2

        def enriched(msgs: list[Message]) -> Iterator[tuple[int, dict[str, Any]]]:
            # W2 written per payment on the way to W1's windows: the profile's fields are not
            # the ones W1 reads, so one dict serves both.
            for m in msgs:
                if m.error() is not None:
                    _check(m)
                d = loads(m.value())  # type: ignore[arg-type]
                d.update(profiles.get(d["customer_id"], _NO_PROFILE))
                produce(m.key(), dumps(d).encode(), d["ts"], w2)
                yield m.partition(), d  # type: ignore[misc]

        n = 0
        interval = interval_ms / 1000
        ready.set()
        last_commit = time.perf_counter()
        while not stop.is_set():
            msgs = consumer.consume(BATCH, CONSUME_WAIT_S)
            if msgs:
                agg.records(enriched(msgs))
                sink.producer.poll(0)
                n += len(msgs)
            if time.perf_counter() - last_commit >= interval:
                offsets = [tp for tp in consumer.position(tps) if tp.offset >= 0]
                if offsets:  # none before the first record
                    sink.commit(offsets)
                last_commit = time.perf_counter()
        sink.commit([tp for tp in consumer.position(tps) if tp.offset >= 0], last=True)
        conn.send(
            {"records_in": n, "windows_emitted": agg.emitted, "late_records": agg.late}
            | sink.stats()
        )
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        consumer.close()
        conn.close()


def w3_baseline(ctx: RunContext, commit_interval_ms: int | None = None) -> Measurement:
    """W3 by the hand-written loop: start it, measure it with ``bench.w3``, stop it."""
    interval_ms = commit_interval_ms or ctx.commit_interval_ms
    t0 = time.perf_counter()
    topics = W3Topics.create(ctx)
    profiles = load_profiles(ctx)
    mp = multiprocessing.get_context("spawn")
    ready, stop = mp.Event(), mp.Event()
    parent, child = mp.Pipe(duplex=False)
    args = (ctx, topics, profiles, interval_ms, ready, stop, child)
    proc = mp.Process(target=w3_loop, args=args, name="bench:w3-loop")
    proc.start()
    child.close()
    w3 = W3Run(ctx, topics, interval_ms)
    stats: dict[str, Any] = {}
    try:
        if not ready.wait(60):
            raise TimeoutError("the W3 loop did not start within 60 s")
        started = time.perf_counter()
        w3.run({"worker (loop)": proc.pid})  # type: ignore[dict-item]
        rss = proc_mib(proc.pid)  # type: ignore[arg-type]
    finally:
        w3.close()
        stop.set()
        if parent.poll(60):
            stats = parent.recv()
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # our own child, by its pid
            proc.join(5)
    if "error" in stats:
        raise RuntimeError(f"the W3 loop failed: {stats['error']}")
    return w3.measurement(startup_s=started - t0, peak_rss_mib=rss, extra={"loop": stats})


register("baseline.w3.eos", kind="w3", guarantee="exactly_once", check_offsets=False)(w3_baseline)
register("baseline.w3.alos", kind="w3", guarantee="at_least_once", check_offsets=False)(w3_baseline)
register("baseline.w3.eos.ci50", kind="w3", guarantee="exactly_once", check_offsets=False)(
    functools.partial(w3_baseline, commit_interval_ms=50)
)
