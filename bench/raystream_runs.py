"""raystream's own benchmark runs: W1/W2 throughput, W3 latency and W4 recovery.

Every run starts its own local Ray (``address="local"``, 4 logical CPUs, no dashboard, loopback
only) in the benchmark process, builds the job with the public API (``raystream.App``), runs it
and stops every actor and Ray again.

**W1 / W2 throughput** (``raystream.w{1,2}.{eos,alos}.{1,2,4}w``): a bounded run
(``app.start(workers=N, bounded=True)``, ``wait()``, ``stop()``) over the prepared input, app name
``ctx.group_id`` (so the runner checks the app's committed offsets). How the numbers are taken
from outside the workers, whose only public window is ``RunningApp.status()``:

* a worker reports (``records_in``, ``committed_at`` wall time...) after each commit, and its
  first commit comes one commit interval after its processing loop starts; so the first record
  consumed is taken as ``min over workers of (first committed_at) - commit_interval``, with the
  status polled every 50 ms. The error is about one micro-batch (~0.1 s), under 1% of a
  1M-record run;
* the end is the last commit: ``max(committed_at)`` of the workers' final reports;
* ``startup_s`` = Ray init + ``app.start()`` (coordinator, topics, worker actors) + the workers'
  own start (clients, ``init_transactions``, table bootstrap) up to the first record;
* ``peak_rss_mib`` = the largest ``VmHWM`` of the worker processes (``running.worker_pids()``,
  read before ``stop()``); every worker's and the benchmark process's are in ``extra``.

**W3 latency** (``raystream.w3.*``): W1 and W2 in one app (one input stream feeding both), run
unbounded with N workers, measured by ``bench.w3`` (the paced input, the reader, the checks) as
the hand-written loop's W3 is.

**W4 recovery** (``raystream.w4.*``): 1,000,000 records with 1,000,000 distinct keys, all in one
10 s tumbling window, so one worker holds 1M open windows; a trickle of updates (1,000/s) keeps
it busy; the worker is SIGKILLed; Ray restarts it and it restores its tasks from their committed
checkpoint epochs. Measured: ``app.start()`` to first record, worker RSS growth for 1M windows,
checkpoint size, kill -> Ray restarted the actor (its thread asked the coordinator for its
tasks again) -> processing resumed (first commit of the new attempt that carries input), and,
offline in the benchmark process on the same checkpoint files, restore and full-epoch write
times. The window is then closed and all 1M results are read back: every key's count must be
exact (nothing lost or counted twice across the kill).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

import raystream as rs
from bench.cpu import proc_mib
from bench.registry import Measurement, RunContext, Verification, register
from bench.w3 import OutputReader, W3Run, W3Topics
from bench.workload import WINDOW_MS
from raystream._kafka.admin import Topics
from raystream.config import KafkaConfig
from raystream.generate.produce import produce_records

#: Status polling period while looking for the first commit or the recovery.
POLL_S = 0.05
#: A bounded run that has not finished after this long fails.
RUN_TIMEOUT_S = 600.0
#: Defaults of the W4 parameters (``RunContext.params``).
W4_KEYS = 1_000_000
W4_TRICKLE_RATE = 1_000
#: Event time of W4's records: the start of one 10 s window (2026-01-01T00:00:00Z).
W4_T0 = 1_767_225_600_000


# -- Ray and processes ---------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session() -> Iterator[float]:
    """A fresh local Ray for this process (yields the seconds ``ray.init`` took); shut down at
    the end, which stops every Ray process it started."""
    # Ray reads this once, at import: keep it on loopback (see raystream/_runtime/driver.py).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.pop("RAYSTREAM_BROKERS", None)
    os.environ.pop("RAY_ADDRESS", None)
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    import ray

    t0 = time.perf_counter()
    ray.init(
        address="local",  # never attach to someone else's cluster on this machine
        num_cpus=4,
        include_dashboard=False,
        namespace="raystream",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def new_app(ctx: RunContext, name: str, checkpoints: Path, **settings: Any) -> rs.App:
    """The app of a run: the run's guarantee and commit interval, checkpoints in ``checkpoints``
    (and the output producer's ``linger.ms`` when ``--output-linger-ms`` set one, commits not
    overlapped with ``--no-overlap-commits``)."""
    settings.setdefault("commit_interval_ms", ctx.commit_interval_ms)
    settings.setdefault("overlap_commits", bool(ctx.params.get("overlap_commits", True)))
    linger = ctx.params.get("output_linger_ms")
    return rs.App(
        name,
        brokers=ctx.bootstrap,
        guarantee=ctx.guarantee,
        checkpoints=checkpoints.as_uri(),
        producer_config=None if linger is None else {"linger.ms": int(linger)},
        **settings,
    )


def build_w1(app: rs.App, stream: rs.Stream, out: str) -> None:
    """W1: per customer, tumbling 10 s windows, count and sum of ``amount``. Window rows are
    ``customer_id`` (the group key's name), ``window_start``, ``window_end``, ``n``, ``total``:
    already W1's output record."""
    (
        stream.group_by("customer_id")
        .window(rs.tumbling("10s"))
        .agg(n=rs.count(), total=rs.sum("amount"))
        .to(out)
    )


def build_w2(app: rs.App, stream: rs.Stream, customers_topic: str, out: str) -> None:
    """W2: every payment with its customer's profile. The result holds the payment's columns,
    then the profile's (``customer_id`` clashes and comes as ``right_customer_id``, which the
    check ignores)."""
    customers = app.table(customers_topic, key="customer_id")
    stream.join(customers, how="left").to(out)


def worker_reports(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The workers' latest reports, by slot."""
    return {int(slot): r for slot, r in status["workers"].items()}


def consumed(reports: dict[int, dict[str, Any]], topic: str) -> int:
    """Records of ``topic`` consumed (positions reached) by the workers."""
    prefix = f"{topic}["
    return sum(
        off
        for r in reports.values()
        for name, off in r["positions"].items()
        if name.startswith(prefix) and off > 0
    )


def restarts(status: dict[str, Any]) -> int:
    """Worker attempts beyond the first: each may have left an aborted transaction."""
    return sum(int(a) for a in status["attempts"].values())


class FirstInput:
    """Polls ``status()`` until every worker has reported its first commit after input."""

    def __init__(self, running: rs.RunningApp, workers: int) -> None:
        self.running = running
        self.workers = workers
        self.first_commit: dict[int, float] = {}
        self.first_epoch: dict[int, int] = {}

    def wait(self, timeout: float) -> float:
        """Block until each worker reported records (or finished); return the earliest first
        commit (wall time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.running.status()
            if status["state"] not in ("running", "finished"):
                raise RuntimeError(f"the app is {status['state']}: {status['workers']}")
            for slot, r in worker_reports(status).items():
                if slot not in self.first_commit and r["records_in"] > 0 and r["committed_at"]:
                    self.first_commit[slot] = r["committed_at"]
                    self.first_epoch[slot] = r["epoch"]
            if len(self.first_commit) >= self.workers or (
                self.first_commit and status["state"] == "finished"
            ):
                return min(self.first_commit.values())
            time.sleep(POLL_S)
        raise TimeoutError(f"no worker reported input within {timeout:.0f}s")


# -- W1 / W2 throughput --------------------------------------------------------------------------
def throughput(ctx: RunContext, *, kind: str, workers: int) -> Measurement:
    """A bounded raystream run of W1 or W2 over the prepared input (see the module docstring)."""
    spec = ctx.workload.spec
    interval = ctx.commit_interval_ms / 1000.0
    with (
        tempfile.TemporaryDirectory(prefix="bench-raystream-") as tmp,
        ray_session() as ray_init_s,
    ):
        os.environ["RAYSTREAM_HOME"] = tmp
        app = new_app(ctx, ctx.group_id, Path(tmp) / "checkpoints")
        stream = app.stream(spec.payments_topic, key="customer_id", time="ts")
        if kind == "w1":
            build_w1(app, stream, ctx.output_topic)
        else:
            build_w2(app, stream, spec.customers_topic, ctx.output_topic)
        t_call = time.time()
        running = app.start(workers=workers, bounded=True)
        t_started = time.time()
        try:
            first = FirstInput(running, workers)
            first_commit = first.wait(RUN_TIMEOUT_S)
            pids = running.worker_pids()
            state = running.wait(RUN_TIMEOUT_S)
            status = running.status()
            hwm = {slot: proc_mib(pid) for slot, pid in pids.items()}
        finally:
            result = running.stop()
        ckpt_bytes = dir_bytes(Path(tmp) / "checkpoints")
    if state != "finished":
        raise RuntimeError(f"the run ended {state}: {status['workers']}")
    reports = worker_reports(status)
    t_first = first_commit - interval
    t_end = max(r["committed_at"] for r in reports.values())
    rss = [v for v in hwm.values() if v is not None]
    return Measurement(
        records_in=consumed(reports, spec.payments_topic),
        records_out=result.records_out,
        startup_s=ray_init_s + (t_first - t_call),
        duration_s=t_end - t_first,
        peak_rss_mib=max(rss) if rss else None,
        extra={
            "ray_init_s": round(ray_init_s, 3),
            "app_start_call_s": round(t_started - t_call, 3),
            "start_to_first_record_s": round(t_first - t_call, 3),
            "span_wall": [t_first, t_end],
            "first_epoch_seen": first.first_epoch,
            "worker_peak_rss_mib": {s: round(v, 1) for s, v in hwm.items() if v is not None},
            "worker_peak_rss_sum_mib": round(sum(rss), 1),
            "driver_peak_rss_mib": round(proc_mib(os.getpid()) or 0.0, 1),
            "records_in_reported": result.records_in,
            "dead_letters": result.dead_letters,
            "epochs": max(r["epoch"] for r in reports.values()),
            "checkpoint_bytes": ckpt_bytes,
            "aborted_transactions": restarts(status),
        },
    )


GUARANTEES = (("eos", "exactly_once"), ("alos", "at_least_once"))
for _kind in ("w1", "w2"):
    for _tag, _guarantee in GUARANTEES:
        for _workers in (1, 2, 4):
            register(
                f"raystream.{_kind}.{_tag}.{_workers}w",
                kind=_kind,  # type: ignore[arg-type]
                guarantee=_guarantee,  # type: ignore[arg-type]
                system="raystream",
                workers=_workers,
            )(functools.partial(throughput, kind=_kind, workers=_workers))


# -- W3 latency ----------------------------------------------------------------------------------


def wait_running(running: rs.RunningApp, workers: int, timeout: float = 120.0) -> None:
    """Until every worker reports that it is processing (reports come at each commit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = running.status()
        if status["state"] != "running":
            raise RuntimeError(f"the app is {status['state']}: {status['workers']}")
        reports = worker_reports(status)
        if len(reports) >= workers and all(r["state"] == "running" for r in reports.values()):
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"the workers were not running after {timeout:.0f}s")


def latency(ctx: RunContext, *, workers: int, commit_interval_ms: int | None = None) -> Measurement:
    """W3: W1 + W2 in one unbounded app at a fixed input rate; end-to-end latency."""
    interval_ms = commit_interval_ms or ctx.commit_interval_ms
    topics = W3Topics.create(ctx)
    with (
        tempfile.TemporaryDirectory(prefix="bench-raystream-") as tmp,
        ray_session() as ray_init_s,
    ):
        os.environ["RAYSTREAM_HOME"] = tmp
        app = new_app(ctx, ctx.group_id, Path(tmp) / "checkpoints", commit_interval_ms=interval_ms)
        stream = app.stream(topics.input, key="customer_id", time="ts")
        build_w1(app, stream, topics.w1)
        build_w2(app, stream, ctx.workload.spec.customers_topic, topics.w2)
        t_call = time.time()
        running = app.start(workers=workers)
        w3 = W3Run(ctx, topics, interval_ms)
        try:
            wait_running(running, workers)
            t_running = time.time()
            pids = running.worker_pids()
            w3.run({f"worker {s}": p for s, p in pids.items()})
            status = running.status()
            hwm = {slot: proc_mib(pid) for slot, pid in pids.items()}
        finally:
            w3.close()
            result = running.stop()
    rss = [v for v in hwm.values() if v is not None]
    reports = worker_reports(status)
    return w3.measurement(
        startup_s=ray_init_s + (t_running - t_call),
        peak_rss_mib=max(rss) if rss else None,
        extra={
            "ray_init_s": round(ray_init_s, 3),
            "worker_peak_rss_mib": {s: round(v, 1) for s, v in hwm.items() if v is not None},
            "epochs": max((r["epoch"] for r in reports.values()), default=0),
            "records_in_reported": result.records_in,
            "aborted_transactions": restarts(status),
        },
    )


for _tag, _guarantee in GUARANTEES:
    for _workers in (1, 2):
        register(
            f"raystream.w3.{_tag}.{_workers}w",
            kind="w3",
            guarantee=_guarantee,  # type: ignore[arg-type]
            system="raystream",
            workers=_workers,
            check_offsets=False,
        )(functools.partial(latency, workers=_workers))
register(
    "raystream.w3.eos.2w.ci50",
    kind="w3",
    guarantee="exactly_once",
    system="raystream",
    workers=2,
    check_offsets=False,
)(functools.partial(latency, workers=2, commit_interval_ms=50))


# -- W4 recovery ---------------------------------------------------------------------------------
def w4_records(keys: int) -> Iterator[tuple[bytes, bytes]]:
    """One record per key, event times spread over one 10 s window (all windows stay open)."""
    for i in range(keys):
        k = b"k%07d" % i
        ts = W4_T0 + i * (WINDOW_MS - 1) // max(keys - 1, 1)
        yield k, b'{"key":"%s","amount":1.0,"ts":%d}' % (k, ts)


class Trickle(threading.Thread):
    """Updates to random W4 keys at ``rate``/s (event time still inside the open window)."""

    def __init__(self, bootstrap: str, topic: str, keys: int, rate: int) -> None:
        super().__init__(name="w4-trickle", daemon=True)
        self.topic = topic
        self.keys = keys
        self.rate = rate
        self.counts = array("l", bytes(8 * keys))
        self.sent = 0
        self.stopping = threading.Event()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "log_level": 3,
            }
        )

    def run(self) -> None:
        rng = random.Random(11)
        start = time.monotonic()
        while not self.stopping.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                i = rng.randrange(self.keys)
                k = b"k%07d" % i
                v = b'{"key":"%s","amount":1.0,"ts":%d}' % (k, W4_T0 + WINDOW_MS - 1)
                self.producer.produce(self.topic, v, k)
                self.counts[i] += 1
                self.sent += 1
            self.producer.poll(0)
            time.sleep(0.005)
        if self.producer.flush(30):
            raise RuntimeError("trickle records not delivered")


class W4Reader(OutputReader):
    """Reads W4's window results: one per key, ``n`` = 1 + its trickle updates."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, keys: int) -> None:
        super().__init__(bootstrap, {topic: partitions}, "read_committed")
        self.got = array("l", bytes(8 * keys))
        self.unexpected = 0
        self.bad_total = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def handle(self, topic: str, ts: int, value: bytes | None, now_ms: float) -> None:
        if self.first_at is None:
            self.first_at = now_ms / 1000
        self.last_at = now_ms / 1000
        r = json.loads(value or b"{}")
        key = r.get("key")
        idx = int(key[1:]) if isinstance(key, str) and key[1:].isdigit() else -1
        if not 0 <= idx < len(self.got) or r.get("window_start") != W4_T0:
            self.unexpected += 1
            return
        if self.got[idx]:
            self.got[idx] = -1  # a duplicate: never equal to an expected count
            return
        self.got[idx] = r.get("n", 0)
        if r.get("total") != float(r.get("n", 0)):
            self.bad_total += 1


class RssSampler(threading.Thread):
    """VmRSS of a process every 100 ms (the series of a worker's memory)."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            v = proc_mib(self.pid, "VmRSS")
            if v is None:
                return
            self.samples.append((time.time(), v))

    def at(self, t: float) -> float | None:
        """The sample taken last before wall time ``t``."""
        before = [v for s, v in self.samples if s <= t]
        return before[-1] if before else None


def offline_checkpoint_times(app: rs.App, partitions: dict[str, int]) -> dict[str, Any]:
    """Restore every task of ``app`` from its committed epoch, in this process, and write each
    one's state again as a full epoch to a scratch store: the checkpoint part of a recovery and
    the cost of a full epoch, measured apart from Ray and Kafka. Uses raystream internals
    (read only) the way tests/integration/eos_model.py does."""
    from raystream._runtime.checkpointing import TaskCheckpointer
    from raystream._runtime.epochs import epochs_topic, marker_partitions
    from raystream._runtime.task import TaskRunner
    from raystream.state.checkpoint import CheckpointStore

    class NullSink:
        def send(self, *args: Any) -> None:
            pass

    def _windows(op: Any) -> int:
        # Windowed operators count windows (a pane store's entries are window starts).
        if hasattr(op, "open_windows"):
            return int(op.open_windows())
        return sum(len(s) for s in op.state_stores())

    plan = app.plan()
    tasks = plan.tasks(partitions)
    c = Consumer({"bootstrap.servers": app.kafka_config().brokers, "group.id": app.name})
    try:
        tps = [
            TopicPartition(epochs_topic(app.name), p)
            for i in range(len(tasks))
            for p in marker_partitions(i)
        ]
        got = {tp.partition: tp.offset for tp in c.committed(tps, timeout=30)}
    finally:
        c.close()
    store = CheckpointStore(app.config.checkpoints or "", app.name)
    rss0 = proc_mib(os.getpid(), "VmRSS") or 0.0
    load_s = write_s = 0.0
    keys = 0
    chain = []
    cks = []
    with tempfile.TemporaryDirectory(prefix="bench-w4-full-") as scratch:
        for i, task in enumerate(tasks):
            e, a = marker_partitions(i)
            head = (got[e], got[a])
            runner = TaskRunner(
                app.name, task, plan, NullSink(), dlq_topic=str, provenance=lambda: []
            )
            ck = TaskCheckpointer(store, runner, compact_every=50)
            t0 = time.perf_counter()
            ck.restore(head)
            load_s += time.perf_counter() - t0
            chain.append(len(store._chain(str(task), head)))
            keys += sum(_windows(op) for op in runner.operators.values())
            cks.append(ck)
        rss1 = proc_mib(os.getpid(), "VmRSS") or 0.0
        for ck in cks:
            ck.store = CheckpointStore(Path(scratch).as_uri(), app.name)
            ck.compact_every = 1
            t0 = time.perf_counter()
            ck.write((ck.head.epoch + 1 if ck.head else 1, 1), {})
            write_s += time.perf_counter() - t0
        full_bytes = dir_bytes(Path(scratch))
    return {
        "keys_restored": keys,
        "restore_s": round(load_s, 2),
        "delta_chain_lengths": chain,
        "full_epoch_write_s": round(write_s, 2),
        "full_epoch_bytes": full_bytes,
        "state_rss_in_bench_process_mib": round(rss1 - rss0, 1),
    }


def recovery(ctx: RunContext) -> Measurement:
    """W4: 1M keys of open window state on one worker; SIGKILL it; time the recovery."""
    keys = int(ctx.params.get("keys", W4_KEYS))
    parts = ctx.workload.spec.partitions
    in_topic, out = f"{ctx.output_topic}.in", ctx.output_topic
    Topics(KafkaConfig(brokers=ctx.bootstrap)).ensure({in_topic: parts})
    t0 = time.perf_counter()
    produce_records(ctx.bootstrap, in_topic, w4_records(keys))
    produce_s = time.perf_counter() - t0
    interval = ctx.commit_interval_ms / 1000.0
    extra: dict[str, Any] = {"keys": keys, "produce_input_s": round(produce_s, 1)}
    with (
        tempfile.TemporaryDirectory(prefix="bench-raystream-") as tmp,
        ray_session() as ray_init_s,
    ):
        os.environ["RAYSTREAM_HOME"] = tmp
        ckpt = Path(tmp) / "checkpoints"
        app = new_app(ctx, ctx.group_id, ckpt)
        (
            app.stream(in_topic, key="key", time="ts")
            .group_by("key")
            .window(rs.tumbling("10s"))
            .agg(n=rs.count(), total=rs.sum("amount"))
            .to(out)
        )
        t_call = time.time()
        running = app.start(workers=1)
        trickle: Trickle | None = None
        reader: W4Reader | None = None
        sampler: RssSampler | None = None
        try:
            pid = running.worker_pids()[0]
            sampler = RssSampler(pid)
            sampler.start()
            first_commit = FirstInput(running, 1).wait(120)
            t_first = first_commit - interval
            # Ingest every key; done at the first commit whose positions reach the end.
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                r = worker_reports(running.status())[0]
                if consumed({0: r}, in_topic) >= keys:
                    t_ingested = r["committed_at"]
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"W4 ingestion stalled at {consumed({0: r}, in_topic)}")
                time.sleep(POLL_S)
            time.sleep(1.5)
            rss_loaded = proc_mib(pid, "VmRSS")
            hwm_loaded = proc_mib(pid)
            rss_first = sampler.at(first_commit)
            ckpt_bytes = dir_bytes(ckpt)
            trickle = Trickle(ctx.bootstrap, in_topic, keys, W4_TRICKLE_RATE)
            trickle.start()
            time.sleep(3.0)
            before = worker_reports(running.status())[0]
            attempt0 = running.status()["attempts"].get(0, 0)
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            t_reassigned = t_resumed = None
            deadline = time.monotonic() + 180
            while t_resumed is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the killed worker did not resume within 180s")
                status = running.status()
                if t_reassigned is None and status["attempts"].get(0, 0) > attempt0:
                    t_reassigned = time.time()
                r = worker_reports(status).get(0)
                if (
                    r is not None
                    and r["attempt"] > attempt0
                    and r["committed_at"] > t_kill
                    and r["records_in"] > 0
                ):
                    t_resumed = r["committed_at"]
                    resumed_report = r
                time.sleep(POLL_S)
            new_pid = running.worker_pids()[0]
            time.sleep(3.0)
            trickle.stopping.set()
            trickle.join(60)
            hwm_restarted = proc_mib(new_pid)
            # With the trickle stopped no epoch is written (nor collected): restore the 1M open
            # windows from the committed epochs, offline, before the window closes.
            time.sleep(2 * interval + 0.5)
            extra.update(offline_checkpoint_times(app, {in_topic: parts}))
            # Close the window: one later record per partition; all 1M results come out.
            reader = W4Reader(ctx.bootstrap, out, parts, keys)
            reader.start()
            closer = Producer({"bootstrap.servers": ctx.bootstrap, "log_level": 3})
            t_close = time.time()
            for p in range(parts):
                v = b'{"key":"close-%d","amount":1.0,"ts":%d}' % (p, W4_T0 + WINDOW_MS)
                closer.produce(in_topic, v, b"close-%d" % p, partition=p)
            closer.flush(30)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while reader.count < keys and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            reader.finish()
            status = running.status()
        finally:
            if trickle is not None and trickle.is_alive():
                trickle.stopping.set()
            if reader is not None and reader.is_alive():
                reader.stopping.set()
            if sampler is not None:
                sampler.stopping.set()
            running.stop()
        ckpt_final_bytes = dir_bytes(ckpt)
    expected = trickle.counts
    wrong = sum(1 for i in range(keys) if reader.got[i] != expected[i] + 1 and reader.got[i] > 0)
    missing = sum(1 for i in range(keys) if reader.got[i] == 0)
    dups = sum(1 for i in range(keys) if reader.got[i] < 0)
    details = []
    if missing:
        details.append(f"{missing} keys have no window result")
    if wrong or reader.bad_total:
        details.append(f"{wrong} keys with a wrong count, {reader.bad_total} wrong totals")
    if dups or reader.unexpected:
        details.append(f"{dups} duplicate results, {reader.unexpected} unexpected")
    ok = not (missing or wrong or dups or reader.unexpected or reader.bad_total)
    verification = Verification(
        ok, keys, reader.count, missing, dups, reader.unexpected, wrong + reader.bad_total, details
    )
    assert t_reassigned is not None and t_resumed is not None
    recovery_s = t_resumed - t_kill
    extra.update(
        {
            "ray_init_s": round(ray_init_s, 3),
            "start_to_first_record_s": round(t_first - t_call, 3),
            "ingest_s": round(t_ingested - t_first, 2),
            "ingest_events_per_s": round(keys / (t_ingested - t_first)),
            "worker_rss_first_commit_mib": rss_first and round(rss_first, 1),
            "worker_rss_loaded_mib": rss_loaded and round(rss_loaded, 1),
            "worker_hwm_loaded_mib": hwm_loaded and round(hwm_loaded, 1),
            "state_rss_mib": round((rss_loaded or 0) - (rss_first or 0), 1),
            "checkpoint_bytes_after_ingest": ckpt_bytes,
            "checkpoint_bytes_final": ckpt_final_bytes,
            "epoch_before_kill": before["epoch"],
            "recovery_s": round(recovery_s, 3),
            "kill_to_reassigned_s": round(t_reassigned - t_kill, 3),
            "reassigned_to_resumed_s": round(t_resumed - t_reassigned, 3),
            "resumed_epoch": resumed_report["epoch"],
            "restarted_worker_hwm_mib": hwm_restarted and round(hwm_restarted, 1),
            "trickle_records": trickle.sent,
            "close_to_all_results_s": reader.last_at and round(reader.last_at - t_close, 2),
            "rss_series_mib": [(round(t - t_call, 1), round(v)) for t, v in sampler.samples[::10]],
            "aborted_transactions": restarts(status),
        }
    )
    return Measurement(
        records_in=keys + trickle.sent,
        records_out=reader.count,
        startup_s=ray_init_s + (t_first - t_call),
        duration_s=recovery_s,
        peak_rss_mib=max(v for v in (hwm_loaded, hwm_restarted) if v is not None),
        verification=verification,
        extra=extra,
    )


register(
    "raystream.w4.eos.1w",
    kind="w4",
    guarantee="exactly_once",
    system="raystream",
    workers=1,
    check_offsets=False,
)(recovery)
