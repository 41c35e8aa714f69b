"""W3, end-to-end latency at a fixed input rate: the harness that raystream's run
(``bench.raystream_runs``) and the hand-written loop (``bench.baseline_w3``) share.

W1 and W2 over one input stream, run unbounded while a separate producer process writes payments
at a fixed rate (default 20,000/s for 60 s) with ``ts`` = the wall-clock ms of its ``produce()``
call. A consumer in the benchmark process (``read_committed`` for exactly-once) stamps each output
record when it becomes readable. W2 latency = read time - ``ts`` of the payment. W1 latency =
read time - ``window_end``: a window can close only once a record with ``ts >= window_end`` was
produced, so this is the time from "the window could be emitted" to "its result is readable".
The run checks its outputs: every payment enriched exactly once, every emitted window exact and
once, every window that had to close emitted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import threading
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.cpu import CpuShares
from bench.registry import Measurement, RunContext, Verification
from bench.workload import WINDOW_MS
from raystream._kafka.admin import Topics
from raystream._kafka.fetch import fetch_ready
from raystream.config import KafkaConfig
from raystream.generate.payments import PaymentsSpec, payments

#: Defaults of the W3 parameters (``RunContext.params``).
W3_RATE = 20_000
W3_DURATION_S = 60.0
#: The input producer's linger.ms (bench.run --w3-linger-ms).
W3_LINGER_MS = 50


W3_POOL = 20_000


def paced_producer(
    bootstrap: str,
    topic: str,
    rate: int,
    duration_s: float,
    seed: int,
    conn: Connection,
    linger_ms: int = 5,
) -> None:
    """Produce payments to ``topic`` at ``rate``/s for ``duration_s`` (run in its own process),
    ``ts`` = wall-clock ms at ``produce()``; send back what was produced and W1's expectation.
    ``linger_ms`` batching is part of the latency measured (``ts`` is taken before it)."""
    pool: list[tuple[bytes, bytes, str, float]] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    spec = PaymentsSpec(count=W3_POOL, customers=10_000, merchants=500, seed=seed)
    for p in payments(spec):
        body = dumps({k: v for k, v in p.items() if k not in ("payment_id", "ts")})
        pool.append((p["customer_id"].encode(), body[:-1].encode(), p["customer_id"], p["amount"]))
    failed: list[str] = []

    def on_error(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    prod = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "on_delivery": on_error,
            "delivery.report.only.error": True,
            "log_level": 3,
        }
    )
    expected: dict[tuple[str, int], list[Any]] = {}
    n = 0
    start = time.time()
    end = start + duration_s
    first_ts = last_ts = int(start * 1000)
    while True:
        now = time.time()
        if now >= end:
            break
        due = int((now - start) * rate)
        while n < due:
            key, body, cid, amount = pool[n % W3_POOL]
            ts = int(time.time() * 1000)
            prod.produce(topic, b'%s,"payment_id":"p%09d","ts":%d}' % (body, n, ts), key)
            w = expected.get((cid, ts - ts % WINDOW_MS))
            if w is None:
                expected[(cid, ts - ts % WINDOW_MS)] = [1, amount]
            else:
                w[0] += 1
                w[1] += amount
            last_ts = ts
            n += 1
        prod.poll(0)
        time.sleep(0.001)
    left = prod.flush(30)
    conn.send(
        {
            "produced": n,
            "seconds": time.time() - start,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "undelivered": left + len(failed),
            "w1": expected,
        }
    )
    conn.close()


class OutputReader(threading.Thread):
    """Reads output topics as they are written, stamping each record when it is readable."""

    def __init__(self, bootstrap: str, topics: dict[str, int], isolation: str) -> None:
        super().__init__(name="output-reader", daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-latency-{time.time_ns()}",
                "enable.auto.commit": False,
                "isolation.level": isolation,
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t, n in topics.items() for p in range(n)]
        )
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

    def handle(self, topic: str, ts: int, value: bytes | None, now_ms: float) -> None:
        """Called for each record with its Kafka timestamp and the time it was read."""
        raise NotImplementedError

    def run(self) -> None:
        c = self.consumer
        try:
            while not self.stopping.is_set():
                batch = fetch_ready(c, 10_000, 0.1)  # returns as soon as a record is readable
                if not batch:
                    continue
                now_ms = time.time() * 1000.0
                for m in batch:
                    if m.error() is not None:
                        raise RuntimeError(f"reading {m.topic()}: {m.error()}")
                    self.handle(m.topic(), m.timestamp()[1], m.value(), now_ms)  # type: ignore[arg-type]
                    self.count += 1
        except BaseException as exc:
            self.error = exc
        finally:
            c.close()

    def finish(self) -> None:
        """Stop reading; raise what went wrong while reading."""
        self.stopping.set()
        self.join(30)
        if self.error is not None:
            raise RuntimeError(f"output reader failed: {self.error}") from self.error


class LatencyReader(OutputReader):
    """W3's reader: latencies of W2 (per payment) and W1 (per window) results, and the checks."""

    def __init__(
        self, bootstrap: str, w1: str, w2: str, partitions: int, isolation: str, capacity: int
    ) -> None:
        super().__init__(bootstrap, {w1: partitions, w2: partitions}, isolation)
        self.w1_topic = w1
        self.w2_topic = w2
        self.lat_w1 = array("d")
        self.lat_w2 = array("d")
        self.w2_read_at = array("d")  # read time of every W2 record, for the per-second series
        self.seen = bytearray(capacity)
        self.w2 = self.w2_dup = self.w2_bad = 0
        self.w1_rows: list[bytes] = []

    def handle(self, topic: str, ts: int, value: bytes | None, now_ms: float) -> None:
        if topic == self.w2_topic:
            self.lat_w2.append(now_ms - ts)
            self.w2_read_at.append(now_ms)
            self.w2 += 1
            v = value or b""
            i = v.find(b'"payment_id":"p')
            idx = int(v[i + 15 : i + 24]) if i >= 0 else -1
            if not 0 <= idx < len(self.seen) or b'"segment":null' in v or b'"segment"' not in v:
                self.w2_bad += 1
            elif self.seen[idx]:
                self.w2_dup += 1
            else:
                self.seen[idx] = 1
        else:
            self.lat_w1.append(now_ms - (ts + 1))  # a window row's timestamp is window_end - 1
            self.w1_rows.append(value or b"")


def percentiles(values: array[float]) -> dict[str, float]:
    """p50 / p90 / p99 / p99.9 / max / mean of ``values`` (ms)."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    n = len(s)

    def q(f: float) -> float:
        return round(s[min(int(f * n), n - 1)], 1)

    return {
        "n": n,
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p99.9": q(0.999),
        "max": round(s[-1], 1),
        "mean": round(statistics.fmean(s), 1),
    }


def p99_per_window(read_at: array[float], lat: array[float], seconds: float) -> list[float]:
    """p99 latency of the records read in each ``seconds`` of the run (shows drift or stalls)."""
    if not read_at:
        return []
    t0 = read_at[0]
    buckets: dict[int, list[float]] = {}
    for t, v in zip(read_at, lat, strict=True):
        buckets.setdefault(int((t - t0) / 1000 / seconds), []).append(v)
    out = []
    for b in sorted(buckets):
        s = sorted(buckets[b])
        out.append(round(s[min(int(0.99 * len(s)), len(s) - 1)], 1))
    return out


def check_w1_rows(
    rows: list[bytes], expected: dict[tuple[str, int], list[Any]], closed_before: int
) -> tuple[int, int, int, int, list[str]]:
    """W1 results against the producer's expectation: (dups, wrong, unexpected, missing, details).
    Every window ending at or before ``closed_before`` must be there."""
    seen: set[tuple[str, int]] = set()
    dup = bad = unexpected = 0
    details: list[str] = []
    for v in rows:
        r = json.loads(v)
        k = (r.get("customer_id"), r.get("window_start"))
        exp = expected.get(k)  # type: ignore[arg-type]
        if exp is None:
            unexpected += 1
            if len(details) < 5:
                details.append(f"unexpected W1 result {r}")
            continue
        if k in seen:
            dup += 1
            if len(details) < 5:
                details.append(f"duplicate W1 result {r}")
            continue
        seen.add(k)  # type: ignore[arg-type]
        if (
            r.get("n") != exp[0]
            or abs(r.get("total", 0) - exp[1]) > 0.006
            or r.get("window_end") != r["window_start"] + WINDOW_MS
        ):
            bad += 1
            if len(details) < 5:
                details.append(f"wrong W1 result {r}: expected n={exp[0]} total={exp[1]:.2f}")
    must = {k for k in expected if k[1] + WINDOW_MS <= closed_before}
    missing = len(must - seen)
    if missing and len(details) < 5:
        details.append(f"{missing} W1 results missing (windows ending by {closed_before})")
    return dup, bad, unexpected, missing, details


@dataclass(frozen=True)
class W3Topics:
    """W3's input topic and its two output topics (W1's windows, W2's enriched payments)."""

    input: str
    w1: str
    w2: str
    partitions: int

    @classmethod
    def create(cls, ctx: RunContext) -> W3Topics:
        """Name the run's topics after ``ctx.output_topic`` (W2's) and create the other two."""
        parts = ctx.workload.spec.partitions
        t = cls(f"{ctx.output_topic}.in", f"{ctx.output_topic}.w1", ctx.output_topic, parts)
        Topics(KafkaConfig(brokers=ctx.bootstrap)).ensure({t.input: parts, t.w1: parts})
        return t


class W3Run:
    """One W3 measurement of a system that is already running: the paced input, the reader, the
    CPU each process took, the checks. ``run()``, then ``close()`` (always), then
    ``measurement()``."""

    def __init__(self, ctx: RunContext, topics: W3Topics, interval_ms: int) -> None:
        self.ctx = ctx
        self.topics = topics
        self.interval_ms = interval_ms
        self.rate = int(ctx.params.get("rate", W3_RATE))
        self.duration_s = float(ctx.params.get("duration_s", W3_DURATION_S))
        self.linger_ms = int(ctx.params.get("linger_ms", W3_LINGER_MS))
        self.reader: LatencyReader | None = None
        self.proc: Any = None
        self.produced: dict[str, Any] = {}
        self.shares: dict[str, float] = {}

    def run(self, pids: dict[str, int]) -> None:
        """Write the input at the rate, read the outputs until every payment is enriched (and a
        little longer for the last windows). ``pids``: the system's processes, by a label that
        starts with "worker" (their CPU is reported)."""
        eos = self.ctx.guarantee == "exactly_once"
        t = self.topics
        self.reader = reader = LatencyReader(
            self.ctx.bootstrap,
            t.w1,
            t.w2,
            t.partitions,
            "read_committed" if eos else "read_uncommitted",
            capacity=int(self.rate * (self.duration_s + 5) * 1.05) + 10_000,
        )
        reader.start()
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe(duplex=False)
        args = (
            self.ctx.bootstrap,
            t.input,
            self.rate,
            self.duration_s,
            self.ctx.workload.spec.seed,
            child,
            self.linger_ms,
        )
        self.proc = mp.Process(target=paced_producer, args=args, name="bench:w3-producer")
        self.proc.start()
        child.close()
        cpu = CpuShares(
            {
                "broker": self.ctx.params.get("broker_pid"),
                "producer": self.proc.pid,
                "bench (reader)": os.getpid(),
                **pids,
            }
        )
        if not parent.poll(self.duration_s + 120):
            raise TimeoutError("the W3 producer did not finish")
        self.produced = parent.recv()
        self.shares = cpu.shares()
        self.proc.join(10)
        deadline = time.monotonic() + 60
        while reader.w2 < self.produced["produced"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2 * self.interval_ms / 1000 + 0.5)
        reader.finish()

    def close(self) -> None:
        """Stop the producer process and the reader if ``run()`` did not get to."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()  # our own child, by its pid
            self.proc.join(5)
        if self.reader is not None and self.reader.is_alive():
            self.reader.stopping.set()

    def measurement(
        self, *, startup_s: float, peak_rss_mib: float | None, extra: dict[str, Any]
    ) -> Measurement:
        """The checks and the latencies, with the system's own ``extra``."""
        reader, produced = self.reader, self.produced
        assert reader is not None and produced, "W3Run.run() did not complete"
        n = produced["produced"]
        seen = sum(reader.seen)
        dup, bad, unexpected, missing, details = check_w1_rows(
            reader.w1_rows, produced["w1"], produced["last_ts"] - 1_000
        )
        w2_missing = n - seen
        if w2_missing:
            details.append(f"{w2_missing} enriched payments missing")
        if reader.w2_dup or reader.w2_bad:
            details.append(f"W2: {reader.w2_dup} duplicates, {reader.w2_bad} without a profile")
        if produced["undelivered"]:
            details.append(f"the producer lost {produced['undelivered']} records")
        ok = (
            not (dup or bad or unexpected or missing or w2_missing or reader.w2_dup)
            and not reader.w2_bad
            and not produced["undelivered"]
        )
        verification = Verification(
            ok,
            expected=n,
            read=reader.count,
            missing=missing + w2_missing,
            duplicates=dup + reader.w2_dup,
            unexpected=unexpected,
            mismatched=bad + reader.w2_bad,
            details=details,
        )
        return Measurement(
            records_in=n,
            records_out=reader.count,
            startup_s=startup_s,
            duration_s=produced["seconds"],
            peak_rss_mib=peak_rss_mib,
            verification=verification,
            extra={
                "rate_target": self.rate,
                "commit_interval_ms": self.interval_ms,
                "producer_linger_ms": self.linger_ms,
                "cpu_percent_of_one_core": self.shares,
                "latency_w2_ms": percentiles(reader.lat_w2),
                "latency_w1_ms": percentiles(reader.lat_w1),
                "w2_p99_per_10s_ms": p99_per_window(reader.w2_read_at, reader.lat_w2, 10.0),
                "w1_results": len(reader.w1_rows),
                **extra,
            },
        )
