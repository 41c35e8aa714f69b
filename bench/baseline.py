"""The baseline: the simplest hand-written confluent-kafka loop, in one process.

Each run assigns all input partitions by hand (no consumer group join, BROKER.md quirk 1), reads
from the beginning, decodes every value with ``json.loads``, and writes JSON results:

* **raw**: consume and count, no decoding, nothing written.
* **W1**: per customer, tumbling 10 s event-time windows, count and sum of ``amount``, in a dict
  per partition. A window's results are emitted when the partition's watermark (the largest
  event time seen in it, no allowed out-of-orderness) reaches the window's end; at the end of the
  input every open window is emitted. Records of an already closed window are counted as late.
* **W2**: the ``customers`` topic is loaded into a dict first; every payment is then written with
  its customer's profile fields merged in.

Guarantees: **at-least-once** flushes the producer and then commits input offsets every
``commit_interval_ms``; **exactly-once** uses a transactional producer that commits, every
``commit_interval_ms``, the outputs together with the input offsets
(``send_offsets_to_transaction``), and reads input with ``read_committed``. The baseline keeps no
state checkpoint: a crash would lose W1's open windows. It measures the Kafka side of the cost only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as TP

from bench.registry import Measurement, RunContext, register
from bench.workload import PROFILE_FIELDS, WINDOW_MS

#: Records asked for per ``consume()`` call.
BATCH = 10_000
#: A run that makes no progress for this long fails.
STALL_S = 60.0

_NO_PROFILE: dict[str, Any] = dict.fromkeys(PROFILE_FIELDS)
_NEVER = 2**62


def _consumer(ctx: RunContext, isolation: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": ctx.bootstrap,
            "group.id": ctx.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 50,
            "queued.min.messages": 100_000,
            "log_level": 3,
        }
    )


def _check(msg: Message) -> None:
    err = msg.error()
    if err is not None:
        raise KafkaException(err)


class Sink:
    """The output producer and the offset commits of one run (at-least-once or exactly-once)."""

    def __init__(self, ctx: RunContext, consumer: Consumer) -> None:
        self.topic = ctx.output_topic
        self.consumer = consumer
        self.eos = ctx.guarantee == "exactly_once"
        self.delivery_errors: list[str] = []
        self.commits = 0
        self.aborted = 0
        self.commit_s = 0.0  # time spent in commit(), flushing included
        self.flush_s = 0.0  # of which, at-least-once, waiting for the producer's flush
        conf: dict[str, Any] = {
            "bootstrap.servers": ctx.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            "on_delivery": self._on_delivery,
            "delivery.report.only.error": True,
            "log_level": 3,
        }
        if self.eos:
            conf["transactional.id"] = ctx.transactional_id
        self.producer = Producer(conf)
        if self.eos:
            self.producer.init_transactions(30)
            self.producer.begin_transaction()

    def _on_delivery(self, err: object, msg: object) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))

    def produce(
        self, key: bytes | None, value: bytes, timestamp: int = 0, topic: str | None = None
    ) -> None:
        """Queue one output record (to the run's output topic unless ``topic`` is given),
        waiting while librdkafka's queue is full."""
        # Positional arguments (topic, value, key, partition, on_delivery, callback, timestamp),
        # as raystream's OutputSink calls it: keywords cost ~0.9 us more a call, and the ratios
        # should not come from a calling convention.
        while True:
            try:
                self.producer.produce(topic or self.topic, value, key, -1, None, None, timestamp)
                return
            except BufferError:
                self.producer.poll(0.01)

    def commit(self, offsets: list[TP], last: bool = False) -> None:
        """Make the outputs so far durable, then commit ``offsets`` (atomically with EOS)."""
        t0 = time.perf_counter()
        if self.eos:
            try:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30
                )
                self.producer.commit_transaction(30)
            except KafkaException:
                self.aborted += 1
                self.producer.abort_transaction(30)
                raise
            if not last:
                self.producer.begin_transaction()
        else:
            left = self.producer.flush(30)
            if left:
                raise RuntimeError(f"{left} output records not delivered within 30 s")
            t1 = time.perf_counter()
            self.flush_s += t1 - t0
            self.consumer.commit(offsets=offsets, asynchronous=False)
        if self.delivery_errors:
            raise RuntimeError(f"output delivery failed: {self.delivery_errors[0]}")
        self.commits += 1
        self.commit_s += time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        """Counters for the results file."""
        return {
            "commits": self.commits,
            "aborted_transactions": self.aborted,
            "commit_s": round(self.commit_s, 3),
            "flush_s": round(self.flush_s, 3),
        }


def _drive(
    ctx: RunContext,
    consumer: Consumer,
    handle: Callable[[list[Message]], None],
    sink: Sink | None,
    finish: Callable[[], None] = lambda: None,
    started: float | None = None,
) -> Measurement:
    """Consume ``payments`` from the beginning to its end offsets, feeding batches to ``handle``.

    Commits every ``ctx.commit_interval_ms`` through ``sink``; at the end calls ``finish`` (emit
    what is left) and commits. Times run from ``started`` (default: now) to the first record
    (startup) and from there to the last commit (duration).
    """
    t0 = time.perf_counter() if started is None else started
    topic = ctx.workload.spec.payments_topic
    ends = ctx.workload.payments_end
    tps = [TP(topic, p) for p in sorted(ends)]
    consumer.assign([TP(topic, p, OFFSET_BEGINNING) for p in sorted(ends)])
    interval = ctx.commit_interval_ms / 1000
    first: float | None = None
    n = 0
    last_commit = last_progress = time.perf_counter()
    while True:
        msgs = consumer.consume(BATCH, 0.1)
        if msgs:
            if first is None:
                first = last_commit = time.perf_counter()
            n += len(msgs)
            handle(msgs)
            if sink is not None:
                sink.producer.poll(0)
        now = time.perf_counter()
        if msgs:
            last_progress = now
        pos = consumer.position(tps)
        if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in pos):
            break
        if sink is not None and first is not None and now - last_commit >= interval:
            sink.commit([tp for tp in pos if tp.offset >= 0])
            last_commit = time.perf_counter()
        if now - last_progress > STALL_S:
            raise TimeoutError(f"no input for {STALL_S}s after {n} records; positions {pos}")
    finish()
    if sink is not None:
        sink.commit([tp for tp in pos if tp.offset >= 0], last=True)
    end = time.perf_counter()
    assert first is not None
    to_wall = time.time() - end
    return Measurement(
        records_in=n,
        records_out=0,
        startup_s=first - t0,
        duration_s=end - first,
        extra={
            **(sink.stats() if sink is not None else {}),
            "span_wall": [first + to_wall, end + to_wall],
        },
    )


@register("baseline.raw", kind="raw", guarantee="none")
def raw_consume(ctx: RunContext) -> Measurement:
    """Consume every payment and count it: no decoding, no output."""
    t0 = time.perf_counter()
    consumer = _consumer(ctx, "read_uncommitted")
    try:

        def handle(msgs: list[Message]) -> None:
            for m in msgs:
                if m.error() is not None:
                    _check(m)

        return _drive(ctx, consumer, handle, None, started=t0)
    finally:
        consumer.close()


def _decoded(msgs: list[Message]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each message's partition and decoded value, one at a time."""
    loads = json.loads
    for m in msgs:
        if m.error() is not None:
            _check(m)
        yield m.partition(), loads(m.value())  # type: ignore[misc,arg-type]


class TumblingCountSum:
    """W1's state: per partition, window start -> customer -> [count, sum], and a watermark."""

    def __init__(self, partitions: int, emit: Callable[[str, int, int, float], None]) -> None:
        self.emit = emit
        self.watermark = [-_NEVER] * partitions
        self.next_end = [_NEVER] * partitions  # end of the earliest open window
        self.open: list[dict[int, dict[str, list[Any]]]] = [{} for _ in range(partitions)]
        self.late = 0
        self.emitted = 0

    def batch(self, msgs: list[Message]) -> None:
        """Decode and aggregate a batch; emit the windows its records closed."""
        self.records(_decoded(msgs))

    def records(self, decoded: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Aggregate decoded payments, each with its partition; emit the windows they closed.
        Take an iterator, not a list: holding a batch's 10,000 dicts at once made the loop
        ~1.7x slower (the garbage collector walks them)."""
        wm, next_end, open_ = self.watermark, self.next_end, self.open
        for p, d in decoded:
            ts = d["ts"]
            start = ts - ts % WINDOW_MS
            w = wm[p]
            if start + WINDOW_MS <= w:
                self.late += 1
                continue
            if ts > w:
                wm[p] = w = ts
            windows = open_[p]
            win = windows.get(start)
            if win is None:
                win = windows[start] = {}
                if start + WINDOW_MS < next_end[p]:
                    next_end[p] = start + WINDOW_MS
            acc = win.get(d["customer_id"])
            if acc is None:
                win[d["customer_id"]] = [1, d["amount"]]
            else:
                acc[0] += 1
                acc[1] += d["amount"]
            if w >= next_end[p]:
                self.close(p, w)

    def close(self, p: int, watermark: int) -> None:
        """Emit and drop partition ``p``'s windows that end at or before ``watermark``."""
        windows = self.open[p]
        for start in sorted(s for s in windows if s + WINDOW_MS <= watermark):
            for cust, (n, total) in windows.pop(start).items():
                self.emit(cust, start, n, total)
                self.emitted += 1
        self.next_end[p] = min(windows) + WINDOW_MS if windows else _NEVER

    def close_all(self) -> None:
        """End of input: emit every open window."""
        for p in range(len(self.open)):
            self.close(p, _NEVER)


def w1_emitter(sink: Sink, topic: str | None = None) -> Callable[[str, int, int, float], None]:
    """W1's ``emit``: one JSON result per closed window, timestamped ``window_end - 1``."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    produce = sink.produce

    def emit(cust: str, start: int, n: int, total: float) -> None:
        end = start + WINDOW_MS
        value = dumps(
            {"customer_id": cust, "window_start": start, "window_end": end, "n": n, "total": total}
        )
        produce(cust.encode(), value.encode(), end - 1, topic)

    return emit


def w1_windowed(ctx: RunContext) -> Measurement:
    """W1: per-customer tumbling 10 s count and sum, written when each window closes."""
    t0 = time.perf_counter()
    eos = ctx.guarantee == "exactly_once"
    consumer = _consumer(ctx, "read_committed" if eos else "read_uncommitted")
    try:
        sink = Sink(ctx, consumer)
        agg = TumblingCountSum(ctx.workload.partitions, w1_emitter(sink))
        m = _drive(ctx, consumer, agg.batch, sink, agg.close_all, started=t0)
        m.records_out = agg.emitted
        m.extra["late_records"] = agg.late
        return m
    finally:
        consumer.close()


def load_profiles(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Read the whole ``customers`` topic: customer id -> profile fields (the last value wins)."""
    topic = ctx.workload.spec.customers_topic
    ends = ctx.workload.customers_end
    c = _consumer(ctx, "read_committed")
    profiles: dict[str, dict[str, Any]] = {}
    try:
        c.assign([TP(topic, p, OFFSET_BEGINNING) for p in sorted(ends)])
        tps = [TP(topic, p) for p in sorted(ends)]
        deadline = time.perf_counter() + STALL_S
        while True:
            for m in c.consume(BATCH, 0.1):
                _check(m)
                key = (m.key() or b"").decode()
                value = m.value()
                if value is None:
                    profiles.pop(key, None)
                else:
                    row = json.loads(value)
                    profiles[key] = {f: row.get(f) for f in PROFILE_FIELDS}
            pos = c.position(tps)
            if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in pos):
                return profiles
            if time.perf_counter() > deadline:
                raise TimeoutError(f"customers not loaded in {STALL_S}s: positions {pos}")
    finally:
        c.close()


def w2_enrich(ctx: RunContext) -> Measurement:
    """W2: load the profiles, then write every payment with its profile merged in."""
    t0 = time.perf_counter()
    profiles = load_profiles(ctx)
    loaded = time.perf_counter()
    eos = ctx.guarantee == "exactly_once"
    consumer = _consumer(ctx, "read_committed" if eos else "read_uncommitted")
    try:
        sink = Sink(ctx, consumer)
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        loads = json.loads
        produce = sink.produce

        def handle(msgs: list[Message]) -> None:
            for m in msgs:
                if m.error() is not None:
                    _check(m)
                d = loads(m.value())  # type: ignore[arg-type]
                d.update(profiles.get(d["customer_id"], _NO_PROFILE))
                produce(m.key(), dumps(d).encode())

        m = _drive(ctx, consumer, handle, sink, started=t0)
        m.records_out = m.records_in
        m.extra.update(table_load_s=loaded - t0, profiles=len(profiles))
        return m
    finally:
        consumer.close()


register("baseline.w1.alos", kind="w1", guarantee="at_least_once")(w1_windowed)
register("baseline.w1.eos", kind="w1", guarantee="exactly_once")(w1_windowed)
register("baseline.w2.alos", kind="w2", guarantee="at_least_once")(w2_enrich)
register("baseline.w2.eos", kind="w2", guarantee="exactly_once")(w2_enrich)
